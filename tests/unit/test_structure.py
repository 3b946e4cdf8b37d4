"""The structure walker must catch truncation anywhere, including inside pixel data."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gateway.dicom.header import read_header
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
