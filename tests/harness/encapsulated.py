"""Encapsulated (JPEG) multi-frame objects of any size, for the frame-access tests.

The frames are the 30 JPEG baseline frames of pydicom's ``examples_ybr_color.dcm``, each grown
to ``frame_bytes`` by APP15 segments of filler inserted after its SOI marker (a decoder skips
APPn segments, so every frame still decodes to the original picture). The Pixel Data is then
written with no offset table, a Basic Offset Table, or an Extended Offset Table, with one or
more fragments per frame: the layouts the gateway must locate frames in.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pydicom
from pydicom.data.data_manager import DATA_ROOT
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames, get_frame
from pydicom.uid import generate_uid

SOURCE = Path(DATA_ROOT) / "test_files" / "examples_ybr_color.dcm"
OFFSETS = ("none", "basic", "extended")


def source_frames() -> list[bytes]:
    """The 30 JPEG frames of the source object, as stored."""
    ds = pydicom.dcmread(SOURCE)
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))


def make_jpeg_multiframe(
    path: Path,
    *,
    frames: int,
    frame_bytes: int,
    offsets: str = "none",
    fragments_per_frame: int = 1,
    seed: int = 0,
) -> tuple[Path, list[bytes]]:
    """Write the object to `path`; return it and its frames as pydicom reads them back (what
    WADO-RS must send)."""
    if offsets not in OFFSETS:
        raise ValueError(f"offsets is one of {OFFSETS}")
    rng = random.Random(seed)
    base = source_frames()
    # One seeded filler pattern, rotated per frame (a random byte at a time would be slow).
    pattern = bytes(rng.randrange(0, 0x7F) for _ in range(65536))
    frames_out = [
        _grown(base[index % len(base)], frame_bytes, pattern, index) for index in range(frames)
    ]
    ds = pydicom.dcmread(SOURCE)
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.NumberOfFrames = frames
    if offsets == "extended":
        value, table, lengths = encapsulate_extended(frames_out)
        ds.PixelData = value
        ds.ExtendedOffsetTable = table
        ds.ExtendedOffsetTableLengths = lengths
    else:
        ds.PixelData = encapsulate(
            frames_out, fragments_per_frame=fragments_per_frame, has_bot=offsets == "basic"
        )
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    stored = pydicom.dcmread(path)
    tables = None
    if offsets == "extended":
        tables = (stored.ExtendedOffsetTable, stored.ExtendedOffsetTableLengths)
    return path, [
        get_frame(stored.PixelData, index, number_of_frames=frames, extended_offsets=tables)
        for index in range(frames)
    ]


def _grown(frame: bytes, size: int, pattern: bytes, index: int) -> bytes:
    """`frame` grown to about `size` bytes by APP15 segments of filler (never 0xFF) after SOI."""
    assert frame[:2] == b"\xff\xd8"
    rotated = pattern[index % 997 :] + pattern[: index % 997]
    segments = []
    missing = size - len(frame)
    while missing > 4:
        length = min(missing - 2, 65535)
        segments.append(b"\xff\xef" + struct.pack(">H", length) + rotated[: length - 2])
        missing -= 2 + length
    return frame[:2] + b"".join(segments) + frame[2:]
