"""Streaming `multipart/related` request bodies: each part goes to its own staging file.

Why: a STOW-RS body can be gigabytes (one multi-frame object, or a whole series), so it is
never held in memory. python-multipart's `MultipartParser` finds boundaries in each network
chunk and hands us slices of part data; we collect them into a small write buffer and append
them to the part's staging file from a worker thread. Memory is bounded by one network chunk
plus `_FLUSH_BYTES` whatever the body size. A part is handed to the caller as soon as its
closing boundary is seen, so ingest of part N overlaps with the upload of part N+1 and
staging space is one part at a time.

Limits are explicit (header bytes and header count per part, parts per body) and every way a
body can be malformed becomes `MultipartError` with the HTTP status to answer (400 or 415).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import anyio.to_thread
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from gateway.exceptions import GatewayError

_FLUSH_BYTES = 1 << 20
_MAX_BOUNDARY = 70  # RFC 2046 section 5.1.1


class MultipartError(GatewayError):
    """The request body is not acceptable; `status` is the HTTP status to answer."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True, kw_only=True)
class MultipartLimits:
    max_parts: int = 10_000
    max_header_bytes: int = 8192  # one header line
    max_headers: int = 16  # header lines per part


@dataclass(slots=True)
class Part:
    """One received body part, complete on disk; the consumer owns (and removes) `path`."""

    index: int
    headers: dict[str, str]
    path: Path
    size: int

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


@dataclass(slots=True)
class _PartState:
    index: int
    headers: dict[str, str] = field(default_factory=dict)
    field_name: bytearray = field(default_factory=bytearray)
    field_value: bytearray = field(default_factory=bytearray)
    pending: list[bytes] = field(default_factory=list)
    pending_bytes: int = 0
    size: int = 0
    finished: bool = False
    file: BinaryIO | None = None
    path: Path | None = None


class _Collector:
    """Receives python-multipart's callbacks (synchronously, inside `write`)."""

    def __init__(self, limits: MultipartLimits) -> None:
        self.limits = limits
        self.parts: list[_PartState] = []  # not yet handed out, in order
        self.count = 0
        self.ended = False

    @property
    def current(self) -> _PartState:
        return self.parts[-1]

    def on_part_begin(self) -> None:
        if self.ended:
            return
        self.count += 1
        if self.count > self.limits.max_parts:
            raise MultipartError(
                f"the body has more than {self.limits.max_parts} parts (http.max_parts)",
                status=413,
            )
        self.parts.append(_PartState(index=self.count - 1))

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.current.field_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.current.field_value += data[start:end]

    def on_header_end(self) -> None:
        part = self.current
        try:
            name = part.field_name.decode("ascii").strip().lower()
            value = part.field_value.decode("latin-1").strip()
        except UnicodeDecodeError as exc:
            raise MultipartError(f"part {part.index + 1}: a header name is not ASCII") from exc
        part.headers[name] = value
        part.field_name.clear()
        part.field_value.clear()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.current
        part.pending.append(bytes(data[start:end]))
        part.pending_bytes += end - start

    def on_part_end(self) -> None:
        if self.parts:
            self.current.finished = True

    def on_end(self) -> None:
        self.ended = True


async def iter_parts(
    chunks: AsyncIterator[bytes],
    *,
    boundary: str,
    staging_dir: Path,
    limits: MultipartLimits,
) -> AsyncIterator[Part]:
    """Yield each part of the body as a complete staging file, in order.

    The consumer must remove `Part.path` (ingest consumes it on success). On any error, and
    when the consumer stops early, files of parts not yet handed out are removed here.
    """
    if not boundary or len(boundary) > _MAX_BOUNDARY:
        raise MultipartError("the multipart boundary parameter is missing or longer than 70")
    collector = _Collector(limits)
    callbacks = {
        "on_part_begin": collector.on_part_begin,
        "on_header_field": collector.on_header_field,
        "on_header_value": collector.on_header_value,
        "on_header_end": collector.on_header_end,
        "on_part_data": collector.on_part_data,
        "on_part_end": collector.on_part_end,
        "on_end": collector.on_end,
    }
    waiting: list[Part] = []
    parser = MultipartParser(
        boundary.encode("latin-1"),
        callbacks,  # type: ignore[arg-type]
        max_header_count=limits.max_headers,
        max_header_size=limits.max_header_bytes,
    )
    try:
        async for chunk in chunks:
            if not chunk:
                continue
            if collector.ended:
                continue  # the epilogue after the close delimiter is ignored (RFC 2046)
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise MultipartError(f"malformed multipart body: {exc}") from exc
            waiting.extend(await _drain(collector, staging_dir))
            while waiting:
                yield waiting.pop(0)
        if not collector.ended:
            raise MultipartError(
                "the multipart body ended before its closing boundary "
                f"(--{boundary}--); was the upload cut short?"
            )
        waiting.extend(await _drain(collector, staging_dir))
        while waiting:
            yield waiting.pop(0)
        if collector.count == 0:
            raise MultipartError("the multipart body has no parts")
    finally:
        for state in collector.parts:
            _discard(state)
        for part in waiting:  # complete but never handed out
            with contextlib.suppress(OSError):
                part.path.unlink()


async def single_part(
    chunks: AsyncIterator[bytes], *, staging_dir: Path, content_type: str
) -> Part:
    """Stream a non-multipart body (a bare `application/dicom` request) to one staging file."""
    state = _PartState(index=0, headers={"content-type": content_type})
    try:
        async for chunk in chunks:
            state.pending.append(chunk)
            state.pending_bytes += len(chunk)
            if state.pending_bytes >= _FLUSH_BYTES:
                await anyio.to_thread.run_sync(_flush, state, staging_dir)
        await anyio.to_thread.run_sync(_flush, state, staging_dir)
        await anyio.to_thread.run_sync(_close, state, staging_dir)
    except BaseException:
        _discard(state)
        raise
    if state.size == 0 or state.path is None:
        _discard(state)
        raise MultipartError("the request body is empty")
    return Part(index=0, headers=state.headers, path=state.path, size=state.size)


async def _drain(collector: _Collector, staging_dir: Path) -> list[Part]:
    """Write buffered data to staging files; return the parts that are now complete."""
    if not any(state.finished or state.pending_bytes >= _FLUSH_BYTES for state in collector.parts):
        return []
    # One worker-thread hop for everything this chunk finished: a chunk of a STOW-RS body
    # often holds several small parts, and two hops per part (write, close) cost more than
    # the writes themselves (issue 7).
    return await anyio.to_thread.run_sync(_write_out, collector, staging_dir)


def _write_out(collector: _Collector, staging_dir: Path) -> list[Part]:
    for state in collector.parts:
        if state.finished or state.pending_bytes >= _FLUSH_BYTES:
            _flush(state, staging_dir)
    ready: list[Part] = []
    while collector.parts and collector.parts[0].finished:
        state = collector.parts[0]
        try:
            _close(state, staging_dir)
        except BaseException:
            collector.parts.pop(0)
            _discard(state)
            for part in ready:  # complete, but the caller never sees them
                with contextlib.suppress(OSError):
                    part.path.unlink()
            raise
        collector.parts.pop(0)
        assert state.path is not None
        ready.append(
            Part(index=state.index, headers=state.headers, path=state.path, size=state.size)
        )
    return ready


def _flush(state: _PartState, staging_dir: Path) -> None:
    try:
        if state.file is None:
            handle, name = tempfile.mkstemp(dir=staging_dir, prefix="stow-", suffix=".part")
            state.path = Path(name)
            state.file = os.fdopen(handle, "wb")
        for block in state.pending:
            state.file.write(block)
    except OSError as exc:
        raise _StagingError(f"cannot write the upload to {staging_dir}: {exc.strerror}") from exc
    state.size += state.pending_bytes
    state.pending.clear()
    state.pending_bytes = 0


def _close(state: _PartState, staging_dir: Path) -> None:
    if state.file is None:
        # An empty part still gets a (zero-byte) file, so the consumer reports it per part.
        _flush(state, staging_dir)
    assert state.file is not None
    try:
        state.file.close()
    except OSError as exc:
        raise _StagingError(f"cannot write the upload: {exc.strerror}") from exc


def _discard(state: _PartState) -> None:
    if state.file is not None:
        with contextlib.suppress(OSError):
            state.file.close()
    if state.path is not None:
        with contextlib.suppress(OSError):
            state.path.unlink()


class _StagingError(MultipartError):
    """The staging folder could not take the upload (disk full): the sender may retry."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=503)
