"""Rendered frames and thumbnails (WADO-RS `/rendered`, `/thumbnail`) as JPEG or PNG.

Why here and not in a viewer: a browser cannot show 16-bit CT, so PS3.18 §8.3.5 asks the
server to apply the modality LUT (rescale) and a VOI window, and to size the picture. The
window comes from the request (`window=center,width,function`), else the object's first
WindowCenter/WindowWidth, else the frame's own minimum and maximum. Only the one frame is read
and decoded (gateway/dicom/pixels.py reads by frame), so rendering a 2 GB multi-frame is
cheap, from the S3 spool too.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut

from gateway.dicom.pixels import FrameError, StoredFrames
from gateway.exceptions import GatewayError

if TYPE_CHECKING:  # importing numpy.typing would load numpy, deferred until a frame is decoded
    from numpy.typing import NDArray

RENDERED_TYPES = ("image/jpeg", "image/png")
THUMBNAIL_SIZE = 128


class RenderError(GatewayError):
    """The object has no renderable pixel data, or its frame cannot be decoded."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Presentation:
    """How to render: the `window`, `viewport` and `quality` query parameters, parsed."""

    media_type: str = "image/jpeg"
    window: tuple[float, float, str] | None = None  # center, width, function
    viewport: tuple[int, int] | None = None  # fit inside (width, height)
    quality: int = 90


def render_frame(frames: StoredFrames, number: int, presentation: Presentation) -> bytes:
    """Frame `number` (1-based) of the opened stored object, encoded as asked."""
    header = frames.header
    if "Rows" not in header or "BitsAllocated" not in header:
        raise RenderError("the object has no pixel data to render")
    count = int(header.get("NumberOfFrames") or 1)
    if not 1 <= number <= count:
        raise RenderError(f"frame {number} does not exist; the object has {count}")
    try:
        array = frames.array(number)
    except FrameError as exc:
        raise RenderError(str(exc)) from exc
    picture = _to_8bit(array, header, presentation.window)
    image = Image.fromarray(picture)
    if presentation.viewport:
        image.thumbnail(presentation.viewport, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if presentation.media_type == "image/png":
        image.save(buffer, format="PNG")
    else:
        image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(
            buffer, format="JPEG", quality=presentation.quality
        )
    return buffer.getvalue()


def _to_8bit(
    array: NDArray[np.generic], header: Dataset, window: tuple[float, float, str] | None
) -> NDArray[np.uint8]:
    samples = int(header.get("SamplesPerPixel") or 1)
    if samples == 3:  # colour: pydicom already converted YBR to RGB
        if array.dtype == np.uint8:
            return np.ascontiguousarray(array, dtype=np.uint8)
        top = float(array.max()) or 1.0
        return np.clip(array.astype(np.float64) * 255.0 / top, 0, 255).astype(np.uint8)
    if int(header.get("BitsAllocated", 8)) == 1:  # binary segmentation
        return (array.astype(np.uint8) * 255).astype(np.uint8)
    values = np.asarray(apply_modality_lut(array, header), dtype=np.float64)
    center, width, function = window or _stored_window(header) or _min_max(values)
    with np.errstate(over="ignore", under="ignore"):  # extreme windows saturate, then clip
        if function.upper() == "SIGMOID":
            scaled = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-6)))
        elif width <= 1.0:  # LINEAR with width 1 is a threshold (PS3.3 C.11.2.1.2.1)
            scaled = np.where(values > center - 0.5, 255.0, 0.0)
        else:  # LINEAR
            scaled = ((values - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
    picture = np.clip(scaled, 0, 255).astype(np.uint8)
    if str(header.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        picture = 255 - picture
    return picture


def _stored_window(header: Dataset) -> tuple[float, float, str] | None:
    center, width = header.get("WindowCenter"), header.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        first_center = float(center[0] if _is_multi(center) else center)
        first_width = float(width[0] if _is_multi(width) else width)
    except (TypeError, ValueError, IndexError):
        return None
    function = str(header.get("VOILUTFunction", "LINEAR") or "LINEAR")
    return first_center, first_width, function


def _min_max(values: NDArray[np.float64]) -> tuple[float, float, str]:
    low, high = float(values.min()), float(values.max())
    return (low + high) / 2.0, max(high - low, 1.0), "LINEAR"


def _is_multi(value: object) -> bool:
    return not isinstance(value, str | bytes) and hasattr(value, "__getitem__")
