"""Minimal STOW-RS client side: multipart/related bodies built by hand, streamed from disk.

Tests need to send exactly the bytes of a file, in a body whose framing they control, to both
Orthanc and the gateway; a full DICOMweb client would hide that framing. Bodies are produced as
an iterator of chunks with a precomputed Content-Length, so a 2 GB object is streamed, not loaded.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx

__all__ = ["multipart_related", "stow"]

_CHUNK = 1024 * 1024


def multipart_related(
    files: Sequence[Path], *, boundary: str | None = None
) -> tuple[Iterator[bytes], int, str]:
    """Frame ``files`` as ``multipart/related; type="application/dicom"``.

    Returns ``(chunks, content_length, content_type)``. The boundary is random (a UUID), so it
    cannot occur in the DICOM payload by accident the way a short fixed one can: given boundary
    ``B`` and a file containing ``--B``, Orthanc 1.10 answered 200 with an empty
    ReferencedSOPSequence and no FailedSOPSequence, and stored nothing.
    """
    boundary = boundary or f"harness-{uuid.uuid4().hex}"
    part_head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    tail = f"--{boundary}--\r\n".encode()
    paths = [Path(f) for f in files]
    length = len(tail) + sum(len(part_head) + p.stat().st_size + 2 for p in paths)

    def chunks() -> Iterator[bytes]:
        for path in paths:
            yield part_head
            with path.open("rb") as fh:
                while block := fh.read(_CHUNK):
                    yield block
            yield b"\r\n"
        yield tail

    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return chunks(), length, content_type


def stow(
    client: httpx.Client,
    url: str,
    files: Sequence[Path],
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = 600.0,
) -> httpx.Response:
    """POST ``files`` to a STOW-RS ``url`` (``.../studies``) and return the response.

    Asks for ``application/dicom+json``. Does not raise on error statuses: STOW answers 200,
    202 (some failed, with a FailedSOPSequence) or 409, and tests assert on which.
    """
    body, length, content_type = multipart_related(files)
    request_headers = {
        "Content-Type": content_type,
        "Content-Length": str(length),
        "Accept": "application/dicom+json",
        **(headers or {}),
    }
    return client.post(url, content=body, headers=request_headers, timeout=timeout)
