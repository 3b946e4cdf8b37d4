"""WADO-RS rendered resources and thumbnails: a consumer-ready JPEG or PNG of one frame.

Why: a browser viewer or a worklist preview wants a picture, not DICOM. `/rendered` honours the
PS3.18 §8.3.5 query parameters `window=center,width[,function]`, `viewport=width,height` and
`quality`; `/thumbnail` is the same picture fitted into 128x128 (or the viewport asked for),
choosing a representative image (the middle image of the first series with images) when the
target is a study or series.
"""

from __future__ import annotations

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from gateway.db.engine import Row
from gateway.db.retrieve import instances_to_retrieve
from gateway.dicom.pixels import FrameError, StoredFrames
from gateway.dicom.render import RENDERED_TYPES, THUMBNAIL_SIZE, Presentation, RenderError
from gateway.dicom.render import render_frame as render_picture
from gateway.spool import Spool
from gateway.web.errors import WebProblem, problem_handler
from gateway.web.frames import parse_frame_list
from gateway.web.media import MediaType
from gateway.web.urls import context_of
from gateway.web.wado import accept_ranges, describe, live_rows, target_uids


@problem_handler
async def render_instance(request: Request) -> Response:
    """GET .../instances/{instance}/rendered (the first frame)."""
    return await _render(request, frame=1, thumbnail=False)


@problem_handler
async def render_frame(request: Request) -> Response:
    """GET .../instances/{instance}/frames/{frames}/rendered (one frame number)."""
    numbers = parse_frame_list(str(request.path_params["frames"]))
    if len(numbers) != 1:
        raise WebProblem(400, "a rendered frame names exactly one frame number")
    return await _render(request, frame=numbers[0], thumbnail=False)


@problem_handler
async def thumbnail(request: Request) -> Response:
    """GET .../thumbnail at study, series, instance or frame level."""
    frame = 1
    if "frames" in request.path_params:
        numbers = parse_frame_list(str(request.path_params["frames"]))
        if len(numbers) != 1:
            raise WebProblem(400, "a frame thumbnail names exactly one frame number")
        frame = numbers[0]
    return await _render(request, frame=frame, thumbnail=True)


async def _render(request: Request, *, frame: int, thumbnail: bool) -> Response:
    context = context_of(request)
    study, series, sop = target_uids(request)
    presentation = _presentation(request, thumbnail=thumbnail)
    rows = live_rows(
        await anyio.to_thread.run_sync(
            lambda: instances_to_retrieve(context.db, study, series, sop)
        ),
        describe(study, series, sop),
    )
    row = rows[0] if sop else _representative(rows)
    picture = await anyio.to_thread.run_sync(_picture, context.spool, row, frame, presentation)
    return Response(picture, media_type=presentation.media_type)


def _representative(rows: list[Row]) -> Row:
    """The middle image of the first series that has images."""
    images = [row for row in rows if row["rows"] is not None]
    if not images:
        raise WebProblem(404, "no instance here has pixel data to show")
    first_series = images[0]["series_instance_uid"]
    series = [row for row in images if row["series_instance_uid"] == first_series]
    return series[len(series) // 2]


def _picture(spool: Spool, row: Row, frame: int, presentation: Presentation) -> bytes:
    # Random access: the header and this frame's bytes only, also from the S3 spool.
    with spool.open_seekable(str(row["spool_key"]), int(row["size"])) as fp:
        try:
            return render_picture(StoredFrames(fp), frame, presentation)
        except (RenderError, FrameError) as exc:
            status = 404 if "does not exist" in str(exc) or "no pixel data" in str(exc) else 500
            raise WebProblem(status, str(exc)) from exc


def _presentation(request: Request, *, thumbnail: bool) -> Presentation:
    media_type = _rendered_type(accept_ranges(request))
    params = request.query_params
    window = None
    if "window" in params:
        parts = params["window"].split(",")
        try:
            center, width = float(parts[0]), float(parts[1])
        except (ValueError, IndexError) as exc:
            raise WebProblem(400, "window is center,width[,linear|sigmoid]") from exc
        function = parts[2].strip().upper() if len(parts) > 2 else "LINEAR"
        if len(parts) > 3 or function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID") or width <= 0:
            raise WebProblem(400, "window is center,width[,linear|sigmoid] with width > 0")
        window = (center, width, function)
    viewport = (THUMBNAIL_SIZE, THUMBNAIL_SIZE) if thumbnail else None
    if "viewport" in params:
        size = params["viewport"].split(",")
        if len(size) not in (2, 6) or not all(s.isdigit() and len(s) <= 5 for s in size[:2]):
            raise WebProblem(400, "viewport is width,height in pixels")
        width_px, height_px = int(size[0]), int(size[1])
        if not (0 < width_px <= 9999 and 0 < height_px <= 9999):
            raise WebProblem(400, "viewport width and height must be 1..9999")
        viewport = (width_px, height_px)
    quality = 90
    if "quality" in params:
        text = params["quality"]
        if not text.isdigit() or not 1 <= int(text) <= 100:
            raise WebProblem(400, "quality is an integer from 1 to 100")
        quality = int(text)
    return Presentation(media_type=media_type, window=window, viewport=viewport, quality=quality)


def _rendered_type(ranges: list[MediaType]) -> str:
    for item in ranges:
        for media_type in RENDERED_TYPES:
            if item.matches(media_type):
                return media_type
    raise WebProblem(406, f"rendered resources are available as {' or '.join(RENDERED_TYPES)}")
