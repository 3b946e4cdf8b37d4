"""The STOW-RS request body: exact framing, announced length, few writes, exact-size reads."""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path

import pytest

from gateway.exceptions import SpoolError
from gateway.forward.base import OutgoingInstance
from gateway.forward.multipart import CHUNK_SIZE, DicomMultipartBody, PartSourceError

BOUNDARY = "b" * 32
HEAD = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
CLOSE = f"--{BOUNDARY}--\r\n".encode()


class RecordingStream(io.BytesIO):
    """A spool stream that remembers how many bytes each read asked for."""

    def __init__(self, data: bytes, asked: list[int]) -> None:
        super().__init__(data)
        self.asked = asked

    def read(self, size: int | None = -1) -> bytes:
        self.asked.append(-1 if size is None else size)
        return super().read(size)


def instance(
    delivery_id: int, data: bytes, *, size: int | None = None, asked: list[int] | None = None
) -> OutgoingInstance:
    return OutgoingInstance(
        delivery_id=delivery_id,
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.1",
        sop_instance_uid=f"1.2.3.1.{delivery_id}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size=len(data) if size is None else size,
        open=lambda: RecordingStream(data, asked if asked is not None else []),
        local_file=lambda: contextlib.nullcontext(Path("/dev/null")),
    )


def test_body_is_framed_exactly_and_as_long_as_announced() -> None:
    parts = [b"first", b"", b"x" * (CHUNK_SIZE + 3)]
    body = DicomMultipartBody(
        [instance(n, data) for n, data in enumerate(parts, 1)], boundary=BOUNDARY
    )
    chunks = list(body)
    expected = b"".join(HEAD + data + b"\r\n" for data in parts) + CLOSE
    assert b"".join(chunks) == expected
    assert body.content_length == len(expected)
    # The CRLF ending a part travels with the next delimiter: one framing chunk between parts.
    sep = len(HEAD) + 2
    assert [len(c) for c in chunks] == [len(HEAD), 5, sep, sep, CHUNK_SIZE, 3, len(CLOSE) + 2]


def test_an_empty_body_is_only_the_closing_delimiter() -> None:
    body = DicomMultipartBody([], boundary=BOUNDARY)
    assert list(body) == [CLOSE]
    assert body.content_length == len(CLOSE)


def test_reads_ask_for_what_is_left_then_check_the_end() -> None:
    asked: list[int] = []
    data = b"y" * (CHUNK_SIZE + 10)
    list(DicomMultipartBody([instance(1, data, asked=asked)], boundary=BOUNDARY))
    assert asked == [CHUNK_SIZE, 10, 1]


@pytest.mark.parametrize(
    ("data", "size", "found"), [(b"12345", 4, "more than 4"), (b"123", 5, "holds 3 bytes")]
)
def test_a_stored_size_that_differs_is_permanent(data: bytes, size: int, found: str) -> None:
    body = DicomMultipartBody([instance(7, data, size=size)], boundary=BOUNDARY)
    with pytest.raises(PartSourceError) as caught:
        list(body)
    assert caught.value.permanent and caught.value.delivery_id == 7
    assert found in str(caught.value)


def test_a_spool_read_error_is_transient() -> None:
    class Broken(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise SpoolError("disk on fire")

    broken = dataclasses.replace(instance(3, b"abc"), open=lambda: Broken(b"abc"))
    with pytest.raises(PartSourceError) as caught:
        list(DicomMultipartBody([broken], boundary=BOUNDARY))
    assert not caught.value.permanent and caught.value.delivery_id == 3
    assert "disk on fire" in str(caught.value)
