"""The structure walker must catch truncation anywhere, including inside pixel data."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gateway.dicom.header import read_dataset, read_header
from gateway.exceptions import InvalidInputError


def _write(path: Path, *, sop_uid: str | None = None, pixels: bytes = b"\x00\x01" * 64) -> Path:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored = 8, 8, 16, 16
    ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 15, 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = pixels
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def test_valid_file_reads(tmp_path: Path) -> None:
    header = read_header(_write(tmp_path / "ok.dcm"))
    assert header.transfer_syntax_uid == ExplicitVRLittleEndian
    assert "PixelData" not in header.dataset


@pytest.mark.parametrize("cut", [1, 7, 64, 129])
def test_truncated_pixel_data_is_refused(tmp_path: Path, cut: int) -> None:
    path = _write(tmp_path / "cut.dcm")
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    with pytest.raises(InvalidInputError, match=r"truncated|cannot parse") as info:
        read_header(path)
    assert info.value.dicom_status == 0xC000


def test_trailing_garbage_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "tail.dcm")
    path.write_bytes(path.read_bytes() + b"\x01\x02\x03")
    with pytest.raises(InvalidInputError):
        read_header(path)


def test_not_dicom_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"hello world" * 20)
    with pytest.raises(InvalidInputError):
        read_header(path)


def test_path_traversal_uid_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "evil.dcm", sop_uid="1.2.3")
    data = path.read_bytes().replace(b"1.2.3\x00", b"../../x", 1)
    path.write_bytes(data)
    with pytest.raises(InvalidInputError):
        read_header(path)


@pytest.mark.parametrize(
    "name",
    [
        "JPEG2000.dcm",
        "rtdose_rle.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_RLE.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "CT_small.dcm",
        "image_dfl.dcm",
    ],
)
def test_bundled_files_of_many_syntaxes_pass(name: str) -> None:
    path = get_testdata_file(name)
    assert path is not None
    header = read_header(Path(path))
    assert header.sop_instance_uid


def test_encapsulated_truncation_is_refused(tmp_path: Path) -> None:
    source = get_testdata_file("JPEG2000.dcm")
    assert source is not None
    data = Path(source).read_bytes()
    path = tmp_path / "j2k.dcm"
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(InvalidInputError):
        read_header(path)


@pytest.mark.parametrize("private_bytes", [2, 60_000, 65_300, 200_000])
def test_headers_longer_than_the_first_read_are_read_whole(
    tmp_path: Path, private_bytes: int
) -> None:
    ds = pydicom.dcmread(_write(tmp_path / "base.dcm"))
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091001, "OB", b"\x01" * private_bytes)
    ds.StudyDescription = "AFTER THE PRIVATE VALUE"
    path = tmp_path / "long.dcm"
    ds.save_as(path)
    header = read_header(path)
    assert header.dataset.StudyDescription == "AFTER THE PRIVATE VALUE"
    assert header.dataset[0x00091001].value == b"\x01" * private_bytes
    assert "PixelData" not in header.dataset
    with path.open("rb") as stream:
        assert read_dataset(_Unseekable(stream)) == header.dataset


def test_an_object_without_pixel_data_is_read_to_its_end(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_write(tmp_path / "base.dcm"))
    del ds.PixelData
    ds.EncapsulatedDocument = os.urandom(150_001) + b"\x00"
    path = tmp_path / "document.dcm"
    ds.save_as(path)
    assert len(read_header(path).dataset.EncapsulatedDocument) == 150_002
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(InvalidInputError):
        read_header(path)


class _Unseekable(io.RawIOBase):
    """A stream like an S3 object body: read only, forward only."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
