"""Frames by random access (gateway/dicom/pixels.py, fragments.py, spool/ranged.py).

Every case reads the same stored object two ways: the filesystem spool's own file, and ranged
reads through `open_range` (the S3 spool's path, here over the filesystem spool so it runs
without a server; tests/e2e/test_frames_s3.py does it on SeaweedFS). Frames must equal what
pydicom reads from the source, and one frame of a large object must cost about its own bytes.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
import pytest
from pydicom.data.data_manager import DATA_ROOT
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import pixel_array

from gateway.dicom.pixels import FrameError, StoredFrames
from gateway.dicom.render import Presentation, render_frame
from gateway.spool.filesystem import FilesystemSpool
from gateway.spool.ranged import RangedReader
from tests.harness import make_multiframe
from tests.harness.encapsulated import SOURCE, make_jpeg_multiframe

FILES = Path(DATA_ROOT) / "test_files"
FRAME_BYTES = 200_000
OVERHEAD = 192 * 1024  # the header, item headers and read-ahead allowed beyond a frame's bytes


class CountingSource:
    """The filesystem spool's `open_range`, counting the bytes it hands out."""

    def __init__(self, spool: FilesystemSpool) -> None:
        self.spool = spool
        self.bytes = 0
        self.calls = 0

    def open_range(self, key: str, start: int, end: int) -> BinaryIO:
        self.calls += 1
        with self.spool.open_range(key, start, end) as body:
            data = body.read()
        self.bytes += len(data)
        return io.BytesIO(data)


@pytest.fixture
def spool(tmp_path: Path) -> FilesystemSpool:
    return FilesystemSpool(tmp_path / "spool")


def stored(spool: FilesystemSpool, path: Path) -> str:
    key = f"objects/{path.name}"
    staged = spool.staging_dir / path.name
    shutil.copyfile(path, staged)
    spool.put(staged, key)
    return key


def both_ways(spool: FilesystemSpool, key: str) -> Iterator[tuple[str, StoredFrames]]:
    """The object opened as a local file and through ranged reads."""
    yield "file", StoredFrames(spool.open_seekable(key, 0))
    size = (spool.root / key).stat().st_size
    yield "ranged", StoredFrames(RangedReader(CountingSource(spool), key, size))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("offsets", "fragments"),
    [("none", 1), ("none", 3), ("basic", 1), ("basic", 2), ("extended", 1)],
)
def test_encapsulated_frames_match_pydicom(
    spool: FilesystemSpool, tmp_path: Path, offsets: str, fragments: int
) -> None:
    path, expected = make_jpeg_multiframe(
        tmp_path / "mf.dcm",
        frames=24,
        frame_bytes=FRAME_BYTES,
        offsets=offsets,
        fragments_per_frame=fragments,
    )
    key = stored(spool, path)
    for how, frames in both_ways(spool, key):
        with frames.file:
            assert [frames.read(n) for n in (24, 1, 13, 2)] == [
                expected[23],
                expected[0],
                expected[12],
                expected[1],
            ], how
            with pytest.raises(FrameError, match="does not exist"):
                frames.read(25)


@pytest.mark.parametrize(("offsets", "fragments"), [("none", 2), ("basic", 1), ("extended", 1)])
def test_one_encapsulated_frame_costs_its_own_bytes(
    spool: FilesystemSpool, tmp_path: Path, offsets: str, fragments: int
) -> None:
    path, expected = make_jpeg_multiframe(
        tmp_path / "mf.dcm",
        frames=60,
        frame_bytes=FRAME_BYTES,
        offsets=offsets,
        fragments_per_frame=fragments,
    )
    key = stored(spool, path)
    source = CountingSource(spool)
    with RangedReader(source, key, path.stat().st_size) as reader:
        frames = StoredFrames(reader)  # type: ignore[arg-type]
        assert frames.read(40) == expected[39]
    size = path.stat().st_size
    assert size > 50 * FRAME_BYTES
    assert source.bytes <= FRAME_BYTES + OVERHEAD, (source.bytes, size)


def test_one_native_frame_costs_its_own_bytes(spool: FilesystemSpool, tmp_path: Path) -> None:
    path = make_multiframe(tmp_path / "native.dcm", 16 * 1024 * 1024)  # 32 frames of 512 KiB
    key = stored(spool, path)
    reference = pydicom.dcmread(path)
    frame_bytes = reference.Rows * reference.Columns * 2
    offset = len(reference.PixelData) - int(reference.NumberOfFrames) * frame_bytes
    assert offset == 0
    source = CountingSource(spool)
    with RangedReader(source, key, path.stat().st_size) as reader:
        frames = StoredFrames(reader)  # type: ignore[arg-type]
        data = frames.read(20)
        decoded = frames.decoded(20)
    assert data == decoded == reference.PixelData[19 * frame_bytes : 20 * frame_bytes]
    assert source.bytes <= frame_bytes + OVERHEAD, source.bytes
    assert source.calls <= 4


def test_decoded_and_rendered_frames_are_those_of_the_source(
    spool: FilesystemSpool, tmp_path: Path
) -> None:
    pytest.importorskip("pylibjpeg")
    path, _ = make_jpeg_multiframe(tmp_path / "mf.dcm", frames=35, frame_bytes=FRAME_BYTES)
    key = stored(spool, path)
    original = pixel_array(str(SOURCE), index=3)  # frame 34 is source frame 4 grown
    pictures = set()
    for how, frames in both_ways(spool, key):
        with frames.file:
            assert np.array_equal(frames.array(34), original), how
            assert frames.decoded(34) == original.tobytes(), how
            pictures.add(render_frame(frames, 34, Presentation(media_type="image/png")))
    assert len(pictures) == 1


def test_rle_one_fragment_per_frame_without_offset_table(spool: FilesystemSpool) -> None:
    path = FILES / "rtdose_rle.dcm"  # 15 RLE frames, no Basic Offset Table
    source = pydicom.dcmread(path)
    expected = list(generate_frames(source.PixelData, number_of_frames=15))
    key = stored(spool, path)
    for how, frames in both_ways(spool, key):
        with frames.file:
            assert [frames.read(n) for n in range(15, 0, -1)] == expected[::-1], how
            assert np.array_equal(frames.array(7), pixel_array(str(path), index=6)), how


def test_truncated_objects_are_frame_errors(spool: FilesystemSpool, tmp_path: Path) -> None:
    path, _ = make_jpeg_multiframe(tmp_path / "mf.dcm", frames=10, frame_bytes=FRAME_BYTES)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    native = make_multiframe(tmp_path / "native.dcm", 4 * 1024 * 1024)
    cut_native = tmp_path / "cut-native.dcm"
    cut_native.write_bytes(native.read_bytes()[: native.stat().st_size // 2])
    for name, number in ((cut, 8), (cut_native, 8)):
        key = stored(spool, name)
        for how, frames in both_ways(spool, key):
            with frames.file:
                with pytest.raises(FrameError, match=r"truncated|ends inside|cannot locate"):
                    frames.read(number)
                assert frames.read(1), how  # what is there is still served
