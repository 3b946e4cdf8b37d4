"""Fuzzing the parsers that read wire data: zero crashes, only our own errors.

Hypothesis drives (1) the DICOM header reader and structure walker with mutated Part 10 files
(truncations, byte flips, insertions, lengths overwritten with huge or odd values), including
what ingest computes from a header (index values, DICOM JSON); (2) the streaming multipart
parser with mutated STOW-RS bodies split into random network chunks; (3) the bearer-token
verifier with mangled tokens; (4) the STOW-RS endpoint end to end with hostile bodies and
content types. The only acceptable failures are InvalidInputError / MultipartError /
AuthError and clean 4xx answers.

Runs are deterministic (`derandomize`) and bounded; FUZZ_EXAMPLES raises the count and
FUZZ_RANDOM=1 explores new cases locally.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from gateway.auth.principal import SCOPE_READ, SCOPE_WRITE, Principal
from gateway.config import parse_settings
from gateway.dicom.attributes import header_json, indexed_values
from gateway.dicom.header import read_header
from gateway.exceptions import AuthError, InvalidInputError
from gateway.service import Gateway
from gateway.web.app import create_app
from gateway.web.context import WebContext
from gateway.web.multipart import MultipartError, MultipartLimits, iter_parts
from tests.harness import make_ct_series, pydicom_storage_files
from tests.security.issuer import LocalIssuer
from tests.security.support import Signer

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=os.environ.get("FUZZ_RANDOM") != "1",
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _seed_files() -> list[bytes]:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-seeds-"))
    seeds = [make_ct_series(folder, 1, rows=8, cols=8)[0].read_bytes()]
    by_syntax: dict[str, bytes] = {}
    for path in sorted(pydicom_storage_files(), key=lambda p: p.stat().st_size):
        if path.stat().st_size > 40_000:
            continue
        syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        by_syntax.setdefault(syntax, path.read_bytes())
    return seeds + list(by_syntax.values())[:5]


SEEDS = _seed_files()

# One mutation: (kind, relative position 0..1, payload)
mutation = st.tuples(
    st.sampled_from(["truncate", "flip", "insert", "delete", "length", "tag"]),
    st.floats(min_value=0, max_value=1, allow_nan=False),
    st.binary(min_size=1, max_size=8),
)


def _mutate(data: bytes, steps: list[tuple[str, float, bytes]]) -> bytes:
    buffer = bytearray(data)
    for kind, where, payload in steps:
        if not buffer:
            break
        at = min(int(where * len(buffer)), len(buffer) - 1)
        if kind == "truncate":
            del buffer[at:]
        elif kind == "flip":
            buffer[at] ^= payload[0] or 0xFF
        elif kind == "insert":
            buffer[at:at] = payload
        elif kind == "delete":
            del buffer[at : at + len(payload)]
        elif kind == "length":  # a 16- or 32-bit length field turned huge, odd or zero
            value = struct.unpack("<I", (payload * 4)[:4])[0]
            value = [0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, value, 1, 0][payload[0] % 6]
            buffer[at : at + 4] = struct.pack("<I", value)
        else:  # an item/delimiter tag where it does not belong
            tag = [b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0"][payload[0] % 3]
            buffer[at:at] = tag + b"\xff\xff\xff\xff"
    return bytes(buffer)


@FUZZ
@given(
    seed=st.sampled_from(range(len(SEEDS))),
    steps=st.lists(mutation, min_size=1, max_size=4),
)
def test_header_reader_never_crashes(seed: int, steps: list[tuple[str, float, bytes]]) -> None:
    data = _mutate(SEEDS[seed], steps)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.dcm"
        path.write_bytes(data)
        try:
            header = read_header(path)
        except InvalidInputError:
            return
        # What ingest derives from an accepted header must not crash either.
        indexed_values(header.dataset)
        header_json(header.dataset)


def _body(parts: list[bytes], boundary: str) -> bytes:
    out = b""
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


async def _chunks(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in sorted({min(c, len(data)) for c in cuts}):
        yield data[start:cut]
        start = cut
    yield data[start:]


async def _consume(data: bytes, cuts: list[int], boundary: str, staging: Path) -> int:
    count = 0
    limits = MultipartLimits(max_parts=5, max_header_bytes=512, max_headers=8)
    async for part in iter_parts(
        _chunks(data, cuts), boundary=boundary, staging_dir=staging, limits=limits
    ):
        assert part.path.read_bytes() is not None
        part.path.unlink()
        count += 1
    return count


@FUZZ
@given(
    parts=st.lists(st.binary(max_size=300), min_size=0, max_size=4),
    steps=st.lists(mutation, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
    boundary=st.sampled_from(["b", "boundary-1234", "x" * 70, "x" * 71, "", "a b", "--"]),
)
def test_multipart_parser_never_crashes(
    parts: list[bytes], steps: list[tuple[str, float, bytes]], cuts: list[int], boundary: str
) -> None:
    data = _mutate(_body(parts, boundary or "b"), steps)
    with tempfile.TemporaryDirectory() as folder:
        staging = Path(folder)
        try:
            asyncio.run(_consume(data, cuts, boundary, staging))
        except MultipartError as exc:
            assert 400 <= exc.status < 600
        assert list(staging.iterdir()) == [], "staging files left behind"


@pytest.fixture(scope="module")
def signer() -> Iterator[tuple[Signer, Any]]:
    from joserfc.jwk import KeySet

    from gateway.auth.jwt import JwtVerifier

    issuer = LocalIssuer()
    issuer.stop()  # only its key is needed
    keys = KeySet([issuer.signing_key])
    verifier = JwtVerifier(keys=lambda: keys, issuer=issuer.issuer, audience=issuer.audience)
    yield Signer(issuer.signing_key, "RS256", issuer.issuer, issuer.audience), verifier


@FUZZ
@given(
    steps=st.lists(mutation, min_size=1, max_size=3),
    junk=st.text(max_size=200),
    use_junk=st.booleans(),
)
def test_token_verifier_never_crashes(
    signer: tuple[Signer, Any], steps: list[tuple[str, float, bytes]], junk: str, use_junk: bool
) -> None:
    make, verifier = signer
    if use_junk:
        token = junk
    else:
        raw = _mutate(make.token(SCOPE_READ).encode(), steps)
        token = raw.decode("latin-1")
    with contextlib.suppress(AuthError):
        verifier.verify(token)


class _WriteScopes:
    def verify(self, token: str) -> Principal:
        return Principal(subject="fuzzer", scopes=frozenset({SCOPE_READ, SCOPE_WRITE}))


@pytest.fixture(scope="module")
def stow_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Starlette]:
    workdir = tmp_path_factory.mktemp("fuzz-stow")
    raw = {
        "node": {"dimse": {"host": "127.0.0.1", "port": 0}, "http": None},
        "storage": {"spool": "file://spool", "database": "sqlite:///gateway.db"},
    }
    settings_ = parse_settings(raw, base_dir=workdir, source=workdir / "gateway.yaml")
    gateway = Gateway(settings_)
    context = WebContext(
        settings=settings_, ingestor=gateway.ingestor, db=gateway.db, spool=gateway.spool
    )
    yield create_app(context, _WriteScopes())
    gateway.db.close()


async def _post(app: Starlette, url: str, body: bytes, content_type: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as client:
        headers = {"Content-Type": content_type, "Authorization": "Bearer x"}
        return await client.post(url, content=body, headers=headers)


@FUZZ
@given(
    seed=st.sampled_from(range(len(SEEDS))),
    steps=st.lists(mutation, max_size=4),
    content_type=st.sampled_from(
        [
            'multipart/related; type="application/dicom"; boundary=B',
            "multipart/related; boundary=B",
            'multipart/related; type="application/dicom+json"; boundary=B',
            "application/dicom",
            "multipart/related",
            "text/plain",
            'multipart/related; type="application/dicom"; boundary="' + "B" * 200 + '"',
        ]
    ),
    study=st.sampled_from(["", "/1.2.3", "/..%2F..", "/1.2.3.abc"]),
)
def test_stow_endpoint_answers_cleanly(
    stow_app: Starlette,
    seed: int,
    steps: list[tuple[str, float, bytes]],
    content_type: str,
    study: str,
) -> None:
    payload = _mutate(SEEDS[seed], steps)
    body = payload if content_type == "application/dicom" else _body([payload], "B")
    if steps and steps[0][0] == "truncate":
        body = _mutate(body, steps[:1])
    response = asyncio.run(_post(stow_app, f"/studies{study}", body, content_type))
    assert response.status_code < 500 or response.status_code == 503, response.text
