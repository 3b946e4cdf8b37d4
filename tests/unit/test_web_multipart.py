"""The streaming multipart/related parser: parts land in staging files, whatever the chunking;
malformed bodies and limits become precise errors; nothing is left behind in staging."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.web.media import parse_accept, parse_media_type
from gateway.web.multipart import MultipartError, MultipartLimits, Part, iter_parts, single_part

BOUNDARY = "b0undary-1234"


def body(parts: Sequence[bytes], *, boundary: str = BOUNDARY, headers: str | None = None) -> bytes:
    head = headers if headers is not None else "Content-Type: application/dicom\r\n"
    out = b""
    for payload in parts:
        out += f"--{boundary}\r\n{head}\r\n".encode() + payload + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


async def _chunks(data: bytes, sizes: Sequence[int]) -> AsyncIterator[bytes]:
    position, index = 0, 0
    while position < len(data):
        size = sizes[index % len(sizes)] if sizes else len(data)
        yield data[position : position + size]
        position += size
        index += 1


def parse(
    data: bytes,
    staging: Path,
    sizes: Sequence[int] = (),
    limits: MultipartLimits | None = None,
) -> list[tuple[dict[str, str], bytes]]:
    async def run() -> list[tuple[dict[str, str], bytes]]:
        found: list[tuple[dict[str, str], bytes]] = []
        async for part in iter_parts(
            _chunks(data, sizes),
            boundary=BOUNDARY,
            staging_dir=staging,
            limits=limits or MultipartLimits(),
        ):
            found.append((part.headers, part.path.read_bytes()))
            part.path.unlink()
        return found

    return anyio.run(run)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payloads=st.lists(st.binary(max_size=3000), min_size=1, max_size=4),
    sizes=st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=5),
)
def test_parts_survive_any_chunking(
    tmp_path: Path, payloads: list[bytes], sizes: list[int]
) -> None:
    # Payloads may contain CR, LF and dashes: only the full delimiter ends a part.
    found = parse(body(payloads), tmp_path, sizes)
    assert [data for _, data in found] == payloads
    assert all(headers["content-type"] == "application/dicom" for headers, _ in found)
    assert list(tmp_path.iterdir()) == []


def test_payload_with_near_boundary_bytes(tmp_path: Path) -> None:
    tricky = f"\r\n--{BOUNDARY[:-1]}x\r\n--{BOUNDARY}".encode()[:-1] + b"\r\n-"
    assert parse(body([tricky, b"x"]), tmp_path, [7]) == [
        ({"content-type": "application/dicom"}, tricky),
        ({"content-type": "application/dicom"}, b"x"),
    ]


def test_large_part_is_streamed_to_disk(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 20_000  # ~5 MB, several flushes
    [(_, data)] = parse(body([payload]), tmp_path, [65536])
    assert data == payload


def test_body_cut_short_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    data = body([b"a" * 5000, b"b" * 5000])
    with pytest.raises(MultipartError, match="ended before its closing boundary") as info:
        parse(data[:7000], tmp_path, [1000])
    assert info.value.status == 400
    assert list(tmp_path.iterdir()) == []


def test_garbage_is_malformed(tmp_path: Path) -> None:
    with pytest.raises(MultipartError, match="malformed multipart body"):
        parse(b"this is not multipart at all\r\n", tmp_path)


def test_wrong_boundary_is_malformed(tmp_path: Path) -> None:
    with pytest.raises(MultipartError):
        parse(body([b"x"], boundary="other"), tmp_path)


def test_too_many_parts(tmp_path: Path) -> None:
    with pytest.raises(MultipartError, match="more than 2 parts") as info:
        parse(body([b"1", b"2", b"3"]), tmp_path, limits=MultipartLimits(max_parts=2))
    assert info.value.status == 413
    assert list(tmp_path.iterdir()) == []


def test_header_too_long(tmp_path: Path) -> None:
    data = body([b"x"], headers="X-Long: " + "a" * 10_000 + "\r\n")
    with pytest.raises(MultipartError, match="header"):
        parse(data, tmp_path, limits=MultipartLimits(max_header_bytes=1000))


def test_too_many_headers(tmp_path: Path) -> None:
    data = body([b"x"], headers="".join(f"X-{i}: v\r\n" for i in range(20)))
    with pytest.raises(MultipartError, match="header"):
        parse(data, tmp_path, limits=MultipartLimits(max_headers=4))


def test_empty_multipart(tmp_path: Path) -> None:
    with pytest.raises(MultipartError, match="no parts"):
        parse(f"--{BOUNDARY}--\r\n".encode(), tmp_path)


def test_epilogue_is_ignored(tmp_path: Path) -> None:
    found = parse(body([b"x"]) + b"trailing epilogue", tmp_path)
    assert [data for _, data in found] == [b"x"]


def test_missing_boundary_parameter(tmp_path: Path) -> None:
    async def run() -> None:
        async for _ in iter_parts(
            _chunks(b"x", ()), boundary="", staging_dir=tmp_path, limits=MultipartLimits()
        ):
            pass

    with pytest.raises(MultipartError, match="boundary"):
        anyio.run(run)


def test_consumer_stopping_early_cleans_up(tmp_path: Path) -> None:
    async def run() -> Part:
        parts = iter_parts(
            _chunks(body([b"1", b"2"]), ()),
            boundary=BOUNDARY,
            staging_dir=tmp_path,
            limits=MultipartLimits(),
        )
        first = await parts.__anext__()
        await parts.aclose()  # type: ignore[attr-defined]
        return first

    first = anyio.run(run)
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]


def test_single_part_body(tmp_path: Path) -> None:
    async def run() -> Part:
        return await single_part(
            _chunks(b"DICM" * 1000, [100]), staging_dir=tmp_path, content_type="application/dicom"
        )

    part = anyio.run(run)
    assert part.path.read_bytes() == b"DICM" * 1000
    assert part.content_type == "application/dicom"


def test_media_type_parameters() -> None:
    media = parse_media_type(
        'Multipart/Related; type="application/dicom"; boundary="a;b,c"; start=x'
    )
    assert media.name == "multipart/related"
    assert media.params == {"type": "application/dicom", "boundary": "a;b,c", "start": "x"}


def test_accept_order_and_quality() -> None:
    ranges = parse_accept(
        'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5, '
        "application/dicom+json, image/png;q=0"
    )
    assert [r.name for r in ranges] == ["application/dicom+json", "multipart/related"]
    assert ranges[1].params["transfer-syntax"] == "*"
    assert [r.name for r in parse_accept(None)] == ["*/*"]
