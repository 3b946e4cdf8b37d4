"""WADO-RS (PS3.18 §10.4): retrieve studies, series and instances, their metadata and bulk data.

Why it streams: a study can be many gigabytes, so instances are sent as a
`multipart/related; type="application/dicom"` body produced by an async generator that reads
the spool 1 MiB at a time in a worker thread (small instances a few MiB of them at a time);
memory stays flat and the event loop free.

Transfer syntax (Accept `transfer-syntax=` parameter): `*` sends the stored bytes untouched;
no parameter means Explicit VR Little Endian (the PS3.18 default), which is sent untouched
when stored that way and produced by transcoding otherwise; any other syntax is served only if
every instance is stored in it. Whether a request can be met is decided before the first byte,
so an impossible one is a clean 406.

The gateway is a cache: a known instance whose bytes were purged (`storage.retention_hours`)
answers 410 Gone, an unknown one 404.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import anyio.to_thread
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gateway.db.engine import Row
from gateway.db.retrieve import instances_to_retrieve
from gateway.dicom.transcode import can_transcode, to_explicit_little_endian
from gateway.exceptions import InvalidInputError, SpoolError
from gateway.headers import with_headers
from gateway.spool import Spool
from gateway.web import dicomjson
from gateway.web.dicomjson import PIXEL_DATA
from gateway.web.errors import WebProblem, problem_handler
from gateway.web.media import (
    DICOM,
    DICOM_JSON,
    MULTIPART_RELATED,
    OCTET_STREAM,
    MediaType,
    accepts_json,
    parse_accept,
)
from gateway.web.urls import base_url, context_of, instance_url, path_uid

CHUNK = 1 << 20
BATCH = 4 << 20  # small instances are read and sent this many bytes at a time
AS_STORED = "*"


@dataclass(frozen=True, slots=True)
class Choice:
    """The negotiated answer: multipart or a bare Part 10 body, and the transfer syntax."""

    multipart: bool
    transfer_syntax: str  # a UID, or AS_STORED


# -- instances --------------------------------------------------------------------------------


@problem_handler
async def retrieve(request: Request) -> Response:
    """GET /studies/{study}[/series/{series}[/instances/{instance}]]"""
    context = context_of(request)
    study, series, sop = target_uids(request)
    rows = live_rows(
        await anyio.to_thread.run_sync(
            lambda: instances_to_retrieve(context.db, study, series, sop)
        ),
        describe(study, series, sop),
    )
    choice = negotiate_dicom(
        accept_ranges(request),
        [str(r["transfer_syntax_uid"]) for r in rows],
        single=sop is not None,
    )
    if not choice.multipart:
        row = rows[0]
        syntax = _syntax_for(row, choice)
        headers = {"content-type": f"{DICOM}; transfer-syntax={syntax}"}
        if syntax == str(row["transfer_syntax_uid"]):
            headers["content-length"] = str(row["size"])
        return StreamingResponse(_instance_bytes(context.spool, row, choice), headers=headers)
    boundary = f"dicom-gateway-{secrets.token_hex(12)}"
    headers = {"content-type": f'{MULTIPART_RELATED}; type="{DICOM}"; boundary={boundary}'}
    length = _multipart_length(rows, choice, boundary)
    if length is not None:
        headers["content-length"] = str(length)
    return StreamingResponse(_multipart(context.spool, rows, choice, boundary), headers=headers)


def negotiate_dicom(ranges: Sequence[MediaType], stored: Sequence[str], *, single: bool) -> Choice:
    """The first acceptable range every stored syntax can be sent in, or a 406 problem."""
    asked: list[str] = []
    for item in ranges:
        multipart = True
        if item.name == MULTIPART_RELATED:
            kind = item.params.get("type", DICOM).lower()
            if kind not in (DICOM, "*/*", "application/*"):
                asked.append(str(item))
                continue
        elif item.name == DICOM and single:
            multipart = False
        elif item.name not in ("*/*", "multipart/*"):
            asked.append(str(item))
            continue
        syntax = item.params.get("transfer-syntax", ExplicitVRLittleEndian)
        if syntax == AS_STORED or all(can_transcode(ts, syntax) for ts in stored):
            return Choice(multipart, syntax)
        asked.append(str(item))
    raise WebProblem(
        406,
        f"cannot send the stored transfer syntaxes ({', '.join(sorted(set(stored)))}) as "
        f"{'; or '.join(asked) or 'asked'}: ask for transfer-syntax=* (as stored) or "
        f"{ExplicitVRLittleEndian}",
    )


def _syntax_for(row: Row, choice: Choice) -> str:
    stored = str(row["transfer_syntax_uid"])
    return stored if choice.transfer_syntax == AS_STORED else choice.transfer_syntax


def _part_head(boundary: str, syntax: str, length: int) -> bytes:
    return (
        f"--{boundary}\r\nContent-Type: {DICOM}; transfer-syntax={syntax}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode("ascii")


def _multipart_length(rows: Sequence[Row], choice: Choice, boundary: str) -> int | None:
    total = len(f"--{boundary}--\r\n")
    for row in rows:
        syntax = _syntax_for(row, choice)
        if syntax != str(row["transfer_syntax_uid"]):
            return None  # transcoded sizes are known only once produced
        total += len(_part_head(boundary, syntax, int(row["size"]))) + int(row["size"]) + 2
    return total


async def _multipart(
    spool: Spool, rows: Sequence[Row], choice: Choice, boundary: str
) -> AsyncIterator[bytes]:
    small: list[tuple[str, Row]] = []  # as-stored parts waiting to be read in one go
    pending = 0
    batch = 1  # the first part goes out alone: a short time to the first byte
    for row in rows:
        syntax = _syntax_for(row, choice)
        size = int(row["size"])
        if syntax == str(row["transfer_syntax_uid"]) and size <= CHUNK:
            small.append((syntax, row))
            pending += size
            if pending >= batch:
                yield await anyio.to_thread.run_sync(_read_parts, spool, small, boundary)
                small, pending, batch = [], 0, BATCH
            continue
        if small:
            yield await anyio.to_thread.run_sync(_read_parts, spool, small, boundary)
            small, pending = [], 0
        if syntax == str(row["transfer_syntax_uid"]):
            yield _part_head(boundary, syntax, size)
            async for chunk in stream_spool(spool, str(row["spool_key"])):
                yield chunk
        else:
            data = await anyio.to_thread.run_sync(_transcoded, spool, str(row["spool_key"]))
            yield _part_head(boundary, syntax, len(data))
            yield data
        yield b"\r\n"
    if small:
        yield await anyio.to_thread.run_sync(_read_parts, spool, small, boundary)
    yield f"--{boundary}--\r\n".encode("ascii")


def _read_parts(spool: Spool, parts: Sequence[tuple[str, Row]], boundary: str) -> bytes:
    """Several small stored instances as finished parts, read in one worker-thread hop.

    Why: a CT study is hundreds of 0.5 MB files; a thread hop and an event-loop write per file
    and per read cost more than the copy (issue 7: WADO-RS study throughput).
    """
    pieces: list[bytes] = []
    for syntax, row in parts:
        with spool.open(str(row["spool_key"])) as handle:
            data = handle.read()
        pieces += (_part_head(boundary, syntax, len(data)), data, b"\r\n")
    return b"".join(pieces)


async def _instance_bytes(spool: Spool, row: Row, choice: Choice) -> AsyncIterator[bytes]:
    if _syntax_for(row, choice) == str(row["transfer_syntax_uid"]):
        async for chunk in stream_spool(spool, str(row["spool_key"])):
            yield chunk
    else:
        yield await anyio.to_thread.run_sync(_transcoded, spool, str(row["spool_key"]))


async def stream_spool(spool: Spool, key: str) -> AsyncIterator[bytes]:
    """The stored object in 1 MiB chunks, each read in a worker thread."""
    handle: BinaryIO = await anyio.to_thread.run_sync(spool.open, key)
    try:
        while chunk := await anyio.to_thread.run_sync(handle.read, CHUNK):
            yield chunk
    finally:
        handle.close()


def _transcoded(spool: Spool, key: str) -> bytes:
    with spool.open(key) as handle:
        return to_explicit_little_endian(handle)


# -- metadata ---------------------------------------------------------------------------------


@problem_handler
async def retrieve_metadata(request: Request) -> Response:
    """GET .../metadata at study, series or instance level: DICOM JSON with BulkDataURIs."""
    context = context_of(request)
    study, series, sop = target_uids(request)
    if not accepts_json(accept_ranges(request)):
        raise WebProblem(406, f"metadata is available as {DICOM_JSON} only")

    def rows_with_headers() -> list[Row]:
        rows = live_rows(
            instances_to_retrieve(context.db, study, series, sop, with_header=True),
            describe(study, series, sop),
        )
        with_headers(context.db, context.spool, rows)  # made on first read (gateway/headers.py)
        return rows

    rows = await anyio.to_thread.run_sync(rows_with_headers)
    base = base_url(request)
    documents = [_metadata(row, base) for row in rows]
    return JSONResponse(documents, media_type=DICOM_JSON)


def _metadata(row: Row, base: str) -> dicomjson.Document:
    url = instance_url(
        base,
        str(row["study_instance_uid"]),
        str(row["series_instance_uid"]),
        str(row["sop_instance_uid"]),
    )
    try:
        document = dicomjson.rewrite_bulk(dicomjson.load(str(row["header_json"])), url)
    except ValueError:
        document = {}
    if row["rows"] is not None and PIXEL_DATA not in document:
        encapsulated = pydicom.uid.UID(str(row["transfer_syntax_uid"])).is_encapsulated
        document[PIXEL_DATA] = {
            "vr": "OB" if encapsulated else "OW",
            "BulkDataURI": f"{url}/bulk/{PIXEL_DATA}",
        }
    return document


# -- bulk data --------------------------------------------------------------------------------


@problem_handler
async def retrieve_bulkdata(request: Request) -> Response:
    """GET .../instances/{instance}/bulk/{path}: one binary value as multipart/related."""
    context = context_of(request)
    study, series, sop = target_uids(request)
    try:
        steps = dicomjson.parse_bulk_path(str(request.path_params["path"]))
    except InvalidInputError as exc:
        raise WebProblem(404, str(exc)) from exc
    if steps == [PIXEL_DATA]:
        from gateway.web.frames import pixel_data_bulk  # pixel data is served as frames

        return await pixel_data_bulk(request)
    ranges = accept_ranges(request)
    if not any(
        r.name in ("*/*", "multipart/*", OCTET_STREAM)
        or (
            r.name == MULTIPART_RELATED
            and r.params.get("type", OCTET_STREAM) in (OCTET_STREAM, "*/*")
        )
        for r in ranges
    ):
        raise WebProblem(406, f'bulk data is sent as {MULTIPART_RELATED}; type="{OCTET_STREAM}"')
    row = live_rows(
        await anyio.to_thread.run_sync(
            lambda: instances_to_retrieve(context.db, study, series, sop)
        ),
        describe(study, series, sop),
    )[0]
    data = await anyio.to_thread.run_sync(_bulk_value, context.spool, row, steps)
    boundary = f"dicom-gateway-{secrets.token_hex(12)}"
    body = (
        (
            f"--{boundary}\r\nContent-Type: {OCTET_STREAM}\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode("ascii")
        + data
        + f"\r\n--{boundary}--\r\n".encode("ascii")
    )
    return Response(
        body,
        media_type=f'{MULTIPART_RELATED}; type="{OCTET_STREAM}"; boundary={boundary}',
    )


def _bulk_value(spool: Spool, row: Row, steps: list[str | int]) -> bytes:
    # Random access: the header (and a deferred value) only, not the pixel data after it.
    with spool.open_seekable(str(row["spool_key"]), int(row["size"])) as fp:
        dataset = _read_header(fp)
        current: Any = dataset
        value: Any = None
        for step in steps:
            if isinstance(step, str):
                tag = int(step, 16)
                if not isinstance(current, Dataset) or tag not in current:
                    raise WebProblem(404, f"the instance has no element {step} at that path")
                element = current[tag]
                value = element.value
                current = value
            else:
                if not isinstance(current, list | pydicom.sequence.Sequence) or step >= len(
                    current
                ):
                    raise WebProblem(404, f"the sequence has no item {step}")
                current = current[step]
        if not isinstance(value, bytes | bytearray):
            raise WebProblem(404, "that element holds no binary value")
        big_endian = str(row["transfer_syntax_uid"]) == ExplicitVRBigEndian
        return _little_endian(bytes(value), str(element.VR)) if big_endian else bytes(value)


def _read_header(fp: BinaryIO) -> Dataset:
    try:
        return pydicom.dcmread(fp, stop_before_pixels=True, defer_size=4096)
    except SpoolError:
        raise  # the spool, not the object: 503
    except Exception as exc:
        raise WebProblem(500, f"the stored object cannot be read: {exc}") from exc


def _little_endian(data: bytes, vr: str) -> bytes:
    import numpy as np

    widths = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
    width = widths.get(vr)
    if width is None or len(data) % width:
        return data
    return np.frombuffer(data, dtype=f">u{width}").astype(f"<u{width}").tobytes()


# -- shared -----------------------------------------------------------------------------------


def target_uids(request: Request) -> tuple[str, str | None, str | None]:
    study = path_uid(request, "study")
    series = path_uid(request, "series") if "series" in request.path_params else None
    sop = path_uid(request, "instance") if "instance" in request.path_params else None
    return study, series, sop


def accept_ranges(request: Request) -> list[MediaType]:
    try:
        return parse_accept(request.headers.get("accept"))
    except InvalidInputError as exc:
        raise WebProblem(400, f"Accept: {exc}") from exc


def describe(study: str, series: str | None, sop: str | None) -> str:
    if sop:
        return f"instance {sop}"
    if series:
        return f"series {series}"
    return f"study {study}"


def live_rows(rows: list[Row], what: str) -> list[Row]:
    """Rows whose bytes are still cached; 404 if none were ever stored, 410 if all purged."""
    if not rows:
        raise WebProblem(404, f"{what} is not stored in this gateway")
    live = [row for row in rows if row["purged_at"] is None and row["spool_key"]]
    if not live:
        raise WebProblem(
            410,
            f"{what} was received, but the gateway's cached copy was removed after delivery "
            "(storage.retention_hours); retrieve it from the archive it was sent to",
        )
    return live
