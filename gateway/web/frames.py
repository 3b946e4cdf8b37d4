"""WADO-RS frames (`.../frames/1,3,5`) and the Pixel Data bulk value, one frame at a time.

Why frame by frame: viewers fetch single frames of large multi-frame objects; reading by
offset (gateway/dicom/pixels.py) over a seekable spool file keeps each request to the header
and the bytes of the frames asked for, on the filesystem and the S3 spool alike.

Negotiation (Accept): `type="application/octet-stream"` with no transfer syntax (or Explicit
VR Little Endian) gives uncompressed little endian frames, decoding a compressed object when a
codec is installed; `transfer-syntax=*`, `*/*`, or the stored compressed media type
(`image/jpeg`, `image/jls`, `image/jp2`, ...) gives the frames exactly as stored.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import anyio.to_thread
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.db.engine import Row
from gateway.db.retrieve import instances_to_retrieve
from gateway.dicom.pixels import FrameError, PixelLayout, StoredFrames, media_type_of
from gateway.dicom.transcode import can_decode
from gateway.spool import Spool
from gateway.web.errors import WebProblem, problem_handler
from gateway.web.media import MULTIPART_RELATED, OCTET_STREAM, MediaType
from gateway.web.urls import context_of
from gateway.web.wado import CHUNK, accept_ranges, describe, live_rows, target_uids

_MAX_FRAMES_PER_REQUEST = 10_000


@dataclass(frozen=True, slots=True)
class FrameChoice:
    media_type: str
    transfer_syntax: str
    decode: bool


@dataclass(slots=True)
class OpenedInstance:
    """A stored instance opened for frame access for one request (its layout cached here)."""

    row: Row
    spool: Spool
    frames: StoredFrames
    layout: PixelLayout

    def close(self) -> None:
        self.frames.close()


@problem_handler
async def retrieve_frames(request: Request) -> Response:
    """GET .../instances/{instance}/frames/{frames}"""
    numbers = parse_frame_list(str(request.path_params["frames"]))
    instance = await open_instance(request)
    try:
        for number in numbers:
            if number > instance.layout.frames:
                raise WebProblem(
                    404, f"frame {number} does not exist; the object has {instance.layout.frames}"
                )
        choice = negotiate_frames(accept_ranges(request), instance.layout.transfer_syntax)
    except BaseException:
        instance.close()
        raise
    return await _frames_response(instance, numbers, choice)


async def pixel_data_bulk(request: Request) -> Response:
    """The Pixel Data BulkDataURI: the whole native value, or every frame if compressed."""
    instance = await open_instance(request)
    layout = instance.layout
    if layout.encapsulated or layout.transfer_syntax == ExplicitVRBigEndian:
        try:
            choice = negotiate_frames(accept_ranges(request), layout.transfer_syntax)
        except BaseException:
            instance.close()
            raise
        return await _frames_response(instance, list(range(1, layout.frames + 1)), choice)
    assert layout.length is not None
    boundary = f"dicom-gateway-{secrets.token_hex(12)}"
    head = (
        f"--{boundary}\r\nContent-Type: {OCTET_STREAM}\r\nContent-Length: {layout.length}\r\n\r\n"
    ).encode("ascii")
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")

    async def body() -> AsyncIterator[bytes]:
        try:
            yield head
            start, length = layout.value_offset, layout.length or 0
            key = str(instance.row["spool_key"])
            handle = await anyio.to_thread.run_sync(
                instance.spool.open_range, key, start, start + length
            )
            try:
                remaining = length
                while remaining > 0:
                    chunk = await anyio.to_thread.run_sync(handle.read, min(CHUNK, remaining))
                    if not chunk:
                        raise FrameError("the stored pixel data is shorter than declared")
                    remaining -= len(chunk)
                    yield chunk
            finally:
                handle.close()
            yield tail
        finally:
            instance.close()

    return StreamingResponse(
        body(),
        headers={
            "content-type": f'{MULTIPART_RELATED}; type="{OCTET_STREAM}"; boundary={boundary}',
            "content-length": str(len(head) + layout.length + len(tail)),
        },
    )


def parse_frame_list(text: str) -> list[int]:
    """`1,3,5` -> [1, 3, 5]; 400 for anything else."""
    items = text.split(",")
    if len(items) > _MAX_FRAMES_PER_REQUEST or not all(i.isdigit() and len(i) <= 9 for i in items):
        raise WebProblem(400, "frames are 1-based frame numbers separated by commas, e.g. 1,3,5")
    numbers = [int(item) for item in items]
    if any(number < 1 for number in numbers):
        raise WebProblem(400, "frame numbers start at 1")
    return numbers


def negotiate_frames(ranges: Sequence[MediaType], stored: str) -> FrameChoice:
    """Pick the frame representation; 406 if no acceptable one can be produced."""
    stored_media = media_type_of(stored)
    as_stored = FrameChoice(stored_media, stored, decode=stored == ExplicitVRBigEndian)
    decoded = FrameChoice(OCTET_STREAM, ExplicitVRLittleEndian, decode=True)
    for item in ranges:
        if item.name in ("*/*", "multipart/*"):
            return as_stored
        if item.name != MULTIPART_RELATED:
            continue
        kind = item.params.get("type", OCTET_STREAM).lower()
        syntax = item.params.get("transfer-syntax")
        if kind in ("*/*", "image/*") or syntax == "*":
            if kind in ("*/*", "image/*", OCTET_STREAM, stored_media):
                return as_stored
            continue
        if kind == OCTET_STREAM and syntax in (None, ExplicitVRLittleEndian):
            if can_decode(stored):
                return decoded
            continue
        if kind == stored_media and syntax in (None, stored):
            return as_stored
    raise WebProblem(
        406,
        f"frames are stored as {stored_media} ({stored}); ask for "
        f'{MULTIPART_RELATED}; type="{stored_media}" or transfer-syntax=*'
        + ("" if not can_decode(stored) else f', or type="{OCTET_STREAM}"'),
    )


async def open_instance(request: Request) -> OpenedInstance:
    """The one instance the path names, opened for random access, with its pixel layout.

    Random access reads only what is asked for: on the S3 spool a frame costs a ranged GET
    or two, not a download of the object (gateway/spool/ranged.py).
    """
    context = context_of(request)
    study, series, sop = target_uids(request)
    row = live_rows(
        await anyio.to_thread.run_sync(
            lambda: instances_to_retrieve(context.db, study, series, sop)
        ),
        describe(study, series, sop),
    )[0]
    return await anyio.to_thread.run_sync(_open, context.spool, row)


def _open(spool: Spool, row: Row) -> OpenedInstance:
    fp = spool.open_seekable(str(row["spool_key"]), int(row["size"]))
    try:
        frames = StoredFrames(fp)
        if frames.layout is None:
            raise WebProblem(404, "the instance has no pixel data, so it has no frames")
    except FrameError as exc:
        fp.close()
        raise WebProblem(500, str(exc)) from exc
    except BaseException:
        fp.close()
        raise
    return OpenedInstance(row, spool, frames, frames.layout)


async def _frames_response(
    instance: OpenedInstance, numbers: list[int], choice: FrameChoice
) -> Response:
    boundary = f"dicom-gateway-{secrets.token_hex(12)}"
    part_type = f"{choice.media_type}; transfer-syntax={choice.transfer_syntax}"
    try:  # the first frame before the status line: a frame we cannot read is a clean error
        first = await anyio.to_thread.run_sync(_frame, instance, numbers[0], choice.decode)
    except FrameError as exc:
        instance.close()
        raise WebProblem(500, str(exc)) from exc
    except BaseException:
        instance.close()
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            for index, number in enumerate(numbers):
                data = (
                    first
                    if index == 0
                    else await anyio.to_thread.run_sync(_frame, instance, number, choice.decode)
                )
                yield (
                    f"--{boundary}\r\nContent-Type: {part_type}\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n"
                ).encode("ascii")
                yield data
                yield b"\r\n"
            yield f"--{boundary}--\r\n".encode("ascii")
        finally:
            instance.close()

    return StreamingResponse(
        body(),
        headers={
            "content-type": f'{MULTIPART_RELATED}; type="{choice.media_type}"; boundary={boundary}'
        },
    )


def _frame(instance: OpenedInstance, number: int, decode: bool) -> bytes:
    if decode:
        return instance.frames.decoded(number)
    return instance.frames.read(number)
