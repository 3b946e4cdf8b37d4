"""Pixel codecs on first use (gateway/dicom/codecs.py): a server that only moves bytes never
imports numpy or a codec plugin, and the first decode leaves pydicom exactly as a plain import
does. Each case runs in a fresh interpreter: `defer()` must come before pydicom's import."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.dicom import codecs

REPO_ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("numpy")
pytest.importorskip("pylibjpeg")

# Everything `dicom-gateway serve` imports before the first request.
SERVE_IMPORTS = """
import gateway.auth.factory, gateway.dimse.ae, gateway.service, gateway.web.app, uvicorn
"""

# What pydicom's pixel side looks like, and what the gateway's pixel paths produce.
PIXEL_WORK = """
import hashlib
from pathlib import Path
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import AllTransferSyntaxes
from gateway.dicom.pixels import StoredFrames
from gateway.dicom.render import Presentation, render_frame
from gateway.dicom.transcode import can_decode, to_explicit_little_endian

out = {"work": {}}
for name in ("examples_ybr_color.dcm", "JPEG2000.dcm", "JPEGLSNearLossless_16.dcm"):
    path = Path(get_testdata_file(name))
    with path.open("rb") as source:
        explicit = to_explicit_little_endian(source)
    with path.open("rb") as stored:
        frames = StoredFrames(stored)
        out["work"][name] = [
            can_decode(frames.layout.transfer_syntax),
            hashlib.sha256(frames.decoded(1)).hexdigest(),
            hashlib.sha256(explicit).hexdigest(),
            hashlib.sha256(
                render_frame(frames, 1, Presentation(media_type="image/png"))
            ).hexdigest(),
        ]
# After the work: what pydicom's pixel side looks like now.
coders = {}
for uid in AllTransferSyntaxes:
    for kind, get in (("decoder", get_decoder), ("encoder", get_encoder)):
        try:
            coder = get(uid)
        except (NotImplementedError, ValueError):
            continue
        coders[f"{kind} {uid}"] = [  # the plugin order decides which plugin decodes
            [(label, f.__module__, f.__name__) for label, f in coder._available.items()],
            list(coder._unavailable.items()),
        ]
out["coders"] = coders
"""


def run(code: str, **env: str) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
        cwd=REPO_ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def loaded(*names: str) -> str:
    """Code that records which of `names` are really imported (not a stand-in) into `out`."""
    return (
        "import sys\n"
        f"out['loaded'] = sorted(n for n in {names!r} if n in sys.modules and "
        "type(sys.modules[n]).__name__ != '_StandIn')\n"
    )


HEAVY = ("numpy", "numpy._core", "pylibjpeg", "openjpeg", "libjpeg", "jpeg_ls", "requests")


def test_serve_imports_neither_numpy_nor_codec_plugins_nor_jwt() -> None:
    code = (
        "import json\nfrom gateway.dicom import codecs\nout = {'deferred': codecs.defer()}\n"
        + SERVE_IMPORTS
        + "from gateway.auth.factory import make_verifier\n"
        "from gateway.config import parse_settings\n"
        "import tempfile\n"
        "make_verifier(parse_settings({}, base_dir=tempfile.mkdtemp()))\n"
        + loaded(*HEAVY, "joserfc", "cryptography")
        + "print(json.dumps(out))"
    )
    result = run(code)
    assert result == {"deferred": True, "loaded": []}


def test_first_decode_leaves_pydicom_as_a_plain_import_does() -> None:
    deferred = run(
        "import json\nfrom gateway.dicom import codecs\nassert codecs.defer()\n"
        + SERVE_IMPORTS
        + PIXEL_WORK
        + "assert not codecs.deferred()\nprint(json.dumps(out))"
    )
    plain = run("import json\n" + SERVE_IMPORTS + PIXEL_WORK + "print(json.dumps(out))")
    assert deferred == plain
    assert all(work[0] for work in plain["work"].values()), "codecs are installed"
    decoders = plain["coders"][f"decoder {'1.2.840.10008.1.2.4.50'}"][0]  # JPEG baseline
    assert [label for label, _module, _function in decoders] == ["pylibjpeg", "pillow"]


def test_a_numpy_submodule_imported_first_is_not_executed_twice() -> None:
    result = run(
        "import json, sys\nfrom gateway.dicom import codecs\nassert codecs.defer()\n"
        "from numpy.typing import NDArray\nimport numpy.linalg\nimport numpy\n"
        "out = {'same': sys.modules['numpy.linalg'] is numpy.linalg"
        " and sys.modules['numpy._core'] is numpy._core"
        " and sys.modules['numpy'] is numpy,"
        " 'array': int(numpy.linalg.det(numpy.eye(2)))}\n"
        "print(json.dumps(out))"
    )
    assert result == {"same": True, "array": 1}


def test_switched_off_by_the_environment() -> None:
    result = run(
        "import json\nfrom gateway.dicom import codecs\nout = {'deferred': codecs.defer()}\n"
        "import pydicom\n" + loaded("numpy") + "print(json.dumps(out))",
        DICOM_GATEWAY_LAZY_CODECS="0",
    )
    assert result == {"deferred": False, "loaded": ["numpy"]}


def test_too_late_once_pydicom_is_imported() -> None:
    import pydicom  # noqa: F401  (this test process imported it long ago anyway)

    assert codecs.defer() is False
    assert not codecs.deferred()
    codecs.require()  # a no-op


def test_malloc_arenas_respect_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.memory import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    glibc = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
    assert limit_malloc_arenas() is glibc
