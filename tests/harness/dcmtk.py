"""DCMTK command line clients (storescu, echoscu, dcmdump) as independent DIMSE peers.

The gateway must interoperate with what hospitals run, and DCMTK is the reference
implementation most of them embed; a pynetdicom client would share the gateway's own blind spots.
Each wrapper runs the tool to completion and returns the :class:`subprocess.CompletedProcess`
with text stdout/stderr, so tests assert on the return code *and* on what the tool reported.

Why :func:`storescu` writes an association config file: left to its defaults, storescu 3.6.7
proposes a fixed list of 64 storage SOP classes with uncompressed transfer syntaxes only (the
128 presentation contexts are used up), and tries to decompress compressed files, which it
cannot do (no codecs are registered), failing with "0006:020e DIMSE Failed to send message".
``-R`` (``--required``) limits the proposal to the files' SOP classes but still proposes only
uncompressed syntaxes, and the ``-x?`` options add exactly one compressed syntax per run. With
``-xf FILE PROFILE`` we instead propose, for every (SOP class, transfer syntax) pair among the
files, a context with exactly the file's transfer syntax, so every file goes on the wire as it is
stored; storescu picks the context whose syntax matches the file. For native (uncompressed) files
a second context per SOP class offers all uncompressed syntaxes as a fallback, which storescu
can convert to, should the peer refuse e.g. the retired Explicit VR Big Endian.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import pydicom
from pydicom.uid import UID

from .env import native_program
from .process import LOOPBACK

__all__ = [
    "MAX_PRESENTATION_CONTEXTS",
    "dcmdump",
    "echoscu",
    "storescu",
    "storescu_association_config",
]

MAX_PRESENTATION_CONTEXTS = 128
"""DICOM allows 128 presentation contexts per association (odd ids 1..255)."""

_DCMTK_ENV = {"TCP_NODELAY": "1"}

_UNCOMPRESSED = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
)


def storescu(
    files: Sequence[Path],
    port: int,
    *,
    called_aet: str,
    calling_aet: str = "STORESCU",
    extra_args: Sequence[str] = (),
    timeout: float = 300.0,
    host: str = LOOPBACK,
    as_is: bool = True,
) -> subprocess.CompletedProcess[str]:
    """C-STORE ``files`` (files or directories, searched recursively) to ``host:port``.

    With ``as_is=True`` (default) each file is proposed in its own transfer syntax (see the module
    docstring); pass ``as_is=False`` to get storescu's own negotiation, e.g. with ``-xs`` in
    ``extra_args`` (the ``-x?`` options conflict with the config file). storescu stops at the
    first failed store unless ``extra_args`` holds ``-nh`` (``--no-halt``). The file list goes in
    a DCMTK ``@response-file`` so thousands of files do not hit the argv limit. Runs with
    ``TCP_NODELAY=1`` and ``--verbose`` so failures are explained in ``stderr``.
    """
    paths = list(_expand(files))
    if not paths:
        raise ValueError("storescu: no input files")
    with tempfile.TemporaryDirectory(prefix="storescu-") as tmp:
        argv = ["storescu", "--verbose", "-aet", calling_aet, "-aec", called_aet]
        if as_is:
            cfg = Path(tmp) / "association.cfg"
            cfg.write_text(storescu_association_config(paths))
            argv += ["-xf", str(cfg), "Harness"]
        argv += [*extra_args, host, str(port)]
        listing = Path(tmp) / "files.txt"
        # One quoted path per line; DCMTK's command files split on whitespace outside quotes.
        listing.write_text("".join(f'"{p}"\n' for p in paths))
        argv.append(f"@{listing}")
        return _run(argv, timeout)


def echoscu(
    port: int,
    *,
    called_aet: str,
    calling_aet: str = "ECHOSCU",
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
    host: str = LOOPBACK,
) -> subprocess.CompletedProcess[str]:
    """Send one C-ECHO to ``host:port``; return code 0 means the peer answered Success."""
    argv = [
        "echoscu",
        "--verbose",
        "-aet",
        calling_aet,
        "-aec",
        called_aet,
        *extra_args,
        host,
        str(port),
    ]
    return _run(argv, timeout)


def dcmdump(
    path: Path, *extra_args: str, load_long: bool = False, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Dump a file's header with DCMTK: an independent check that a file we wrote parses.

    By default runs with ``-M`` (``--load-short``): long values such as pixel data are skipped
    and shown as "(not loaded)", so a 2 GB file dumps in ~10 ms; with ``load_long=True`` dcmdump
    reads them (5-6 s for 2 GB).
    """
    argv = ["dcmdump", "+M" if load_long else "-M", *extra_args, str(path)]
    return _run(argv, timeout)


def storescu_association_config(files: Iterable[Path]) -> str:
    """Build a DCMTK association config (profile ``Harness``) proposing each file's own syntax.

    Files whose header pydicom cannot read are skipped here; storescu will then report them.
    Raises ``ValueError`` if more than 128 presentation contexts would be needed.
    """
    pairs: dict[tuple[str, str], None] = {}
    for path in files:
        header = _sop_class_and_syntax(path)
        if header is not None:
            pairs[header] = None
    syntax_keys: dict[tuple[str, ...], str] = {}
    contexts: list[tuple[str, str]] = []

    def key_for(syntaxes: tuple[str, ...]) -> str:
        return syntax_keys.setdefault(syntaxes, f"TS{len(syntax_keys) + 1}")

    native_classes: dict[str, None] = {}
    for sop_class, syntax in pairs:
        contexts.append((sop_class, key_for((syntax,))))
        if syntax in _UNCOMPRESSED:
            native_classes[sop_class] = None
    for sop_class in native_classes:
        contexts.append((sop_class, key_for(_UNCOMPRESSED)))
    if len(contexts) > MAX_PRESENTATION_CONTEXTS:
        raise ValueError(
            f"{len(contexts)} presentation contexts needed, at most "
            f"{MAX_PRESENTATION_CONTEXTS} fit in one association: split the files"
        )
    lines = ["[[TransferSyntaxes]]"]
    for syntaxes, key in syntax_keys.items():
        lines.append(f"[{key}]")
        lines += [f"TransferSyntax{i} = {uid}" for i, uid in enumerate(syntaxes, 1)]
    lines += ["[[PresentationContexts]]", "[HarnessContexts]"]
    lines += [
        f"PresentationContext{i} = {sop_class}\\{key}"
        for i, (sop_class, key) in enumerate(contexts, 1)
    ]
    lines += ["[[Profiles]]", "[Harness]", "PresentationContexts = HarnessContexts", ""]
    return "\n".join(lines)


def _sop_class_and_syntax(path: Path) -> tuple[str, str] | None:
    try:
        with warnings.catch_warnings():
            # Tests deliberately send odd files; their header quirks are not our concern here.
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:
        return None
    sop_class = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if not sop_class or not syntax:
        return None
    return str(UID(sop_class)), str(UID(syntax))


def _expand(files: Sequence[Path]) -> Iterable[Path]:
    for item in files:
        path = Path(item)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    program = native_program(argv[0])
    if program is None:
        raise FileNotFoundError(f"DCMTK program {argv[0]!r} is not installed (apt install dcmtk)")
    return subprocess.run(
        [program, *argv[1:]],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        env={**os.environ, **_DCMTK_ENV},
        stdin=subprocess.DEVNULL,
        check=False,
    )
