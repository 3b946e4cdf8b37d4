"""Deterministic DICOM test data: generated series, huge multi-frame objects, pydicom's files.

Everything here is offline and seeded: the same arguments give byte-identical files (UIDs are
derived from the arguments with :func:`pydicom.uid.generate_uid` entropy sources, never from
time or randomness), so a failure reproduces exactly.

* :func:`make_ct_series` / :func:`make_tiny_instances`: valid CT Image Storage files with a
  realistic header, for throughput, routing and fidelity tests.
* :func:`make_multiframe`: a multi-frame object of any size up to ~4 GiB, written by streaming
  the pixel data, so a 2 GB test object never sits in the test runner's memory.
* :func:`pydicom_storage_files`: the real-world variety (transfer syntaxes, character sets, SOP
  classes) bundled with pydicom, filtered to proper storage objects.
* :func:`dataset_bytes` / :func:`same_content`: the two ways tests compare what was sent with
  what arrived: byte-exact (the gateway must not touch data it only relays) and element-exact
  (after a peer that re-encodes, such as storescu converting big endian).
"""

from __future__ import annotations

import hashlib
import struct
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom.sop_class import _STORAGE_CLASSES

__all__ = [
    "dataset_bytes",
    "dataset_offset",
    "deterministic_uid",
    "make_ct_series",
    "make_multiframe",
    "make_tiny_instances",
    "pydicom_storage_files",
    "same_content",
]

_UID_NAMESPACE = "dicom-gateway-tests"
# pynetdicom's storage SOP classes: what a pynetdicom-based SCP (the gateway) can negotiate.
_STORAGE_SOP_CLASSES = frozenset(str(uid) for uid in _STORAGE_CLASSES.values())
# (7FE0,0010) Pixel Data, VR OW, two reserved bytes; the 4-byte length follows.
_PIXEL_DATA_HEADER = struct.pack("<HH2s2x", 0x7FE0, 0x0010, b"OW")
_MAX_ELEMENT_LENGTH = 0xFFFFFFFE  # 0xFFFFFFFF means "undefined length"
_CHUNK = 8 * 1024 * 1024
# Explicit VRs whose length field is 4 bytes (after 2 reserved bytes) instead of 2.
_LONG_LENGTH_VRS = frozenset(
    vr.encode()
    for vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV")
)


def deterministic_uid(*parts: object) -> str:
    """A valid UID (2.25 style via pydicom's prefix) that depends only on ``parts``."""
    return str(generate_uid(entropy_srcs=[_UID_NAMESPACE, *(str(p) for p in parts)]))


# -- generated CT series -------------------------------------------------------------------


def make_ct_series(
    outdir: Path,
    count: int,
    *,
    rows: int = 512,
    cols: int = 512,
    seed: int = 0,
    study_uid: str | None = None,
    patient_name: str = "DOE^JOHN",
    overrides: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``count`` CT Image Storage files (one study, one series) into ``outdir``.

    Explicit VR Little Endian Part 10 files named ``ct_0000.dcm``... with a realistic header
    (patient, study date/time, accession, equipment, geometry, rescale, windowing) and 16-bit
    pixels (12 bits stored) from a seeded numpy generator: ~0.5 MB each at 512x512. The slices
    stack along z at 2.5 mm. ``overrides`` (keyword -> value, e.g. ``{"Modality": "MR",
    "InstitutionName": "X"}``) is applied to every file last, for routing tests.
    """
    return _write_ct(
        Path(outdir),
        count,
        kind="ct",
        rows=rows,
        cols=cols,
        seed=seed,
        study_uid=study_uid,
        patient_name=patient_name,
        overrides=overrides,
    )


def make_tiny_instances(
    outdir: Path,
    count: int,
    *,
    seed: int = 0,
    study_uid: str | None = None,
    patient_name: str = "DOE^JANE",
    overrides: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``count`` ~10 KB CT files (64x64), for tests about counts, not bytes.

    Same header as :func:`make_ct_series` (file names ``tiny_0000.dcm``...) but distinct UIDs
    even for the same seed.
    """
    return _write_ct(
        Path(outdir),
        count,
        kind="tiny",
        rows=64,
        cols=64,
        seed=seed,
        study_uid=study_uid,
        patient_name=patient_name,
        overrides=overrides,
    )


def _write_ct(
    outdir: Path,
    count: int,
    *,
    kind: str,
    rows: int,
    cols: int,
    seed: int,
    study_uid: str | None,
    patient_name: str,
    overrides: Mapping[str, Any] | None,
) -> list[Path]:
    if count < 0:
        raise ValueError("count must be >= 0")
    outdir.mkdir(parents=True, exist_ok=True)
    key = (kind, seed, study_uid, patient_name, rows, cols)
    study = study_uid or deterministic_uid("study", *key)
    series = deterministic_uid("series", study, *key)
    frame_of_reference = deterministic_uid("for", study, *key)
    digest = hashlib.sha256(repr(key).encode()).hexdigest()
    patient_id = f"PID{int(digest[:8], 16) % 10_000_000:07d}"
    accession = f"ACC{int(digest[8:16], 16) % 100_000_000:08d}"
    paths: list[Path] = []
    for index in range(count):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100" if patient_name.isascii() else "ISO_IR 192"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = deterministic_uid("instance", series, index, *key)
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240115"
        ds.StudyTime = "101500"
        ds.SeriesTime = "101700"
        ds.AcquisitionTime = ds.ContentTime = f"1018{index % 60:02d}"
        ds.AccessionNumber = accession
        ds.Modality = "CT"
        ds.Manufacturer = "Harness Medical"
        ds.InstitutionName = "Test Hospital"
        ds.ReferringPhysicianName = "REFERRER^ROBIN"
        ds.StationName = "CT1"
        ds.StudyDescription = "CT CHEST W/O CONTRAST"
        ds.SeriesDescription = "AXIAL 2.5MM"
        ds.ManufacturerModelName = "Synthetic 9000"
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = "2.5"
        ds.KVP = "120"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.StudyID = "1"
        ds.SeriesNumber = 2
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = index + 1
        z = -100.0 + 2.5 * index
        ds.ImagePositionPatient = [-0.5 * cols * 0.7, -0.5 * rows * 0.7, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = z
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.PixelSpacing = [0.7, 0.7]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        rng = np.random.default_rng([seed, index, rows, cols])
        ds.PixelData = rng.integers(0, 4096, size=(rows, cols), dtype="<u2").tobytes()
        for keyword, value in (overrides or {}).items():
            setattr(ds, keyword, value)
        path = outdir / f"{kind}_{index:04d}.dcm"
        _save(ds, path)
        paths.append(path)
    return paths


def _file_meta(ds: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _save(ds: Dataset, path: Path) -> None:
    ds.file_meta = _file_meta(ds)
    # enforce_file_format writes preamble, DICM, group length and implementation UIDs.
    ds.save_as(path, enforce_file_format=True)


# -- streamed multi-frame ------------------------------------------------------------------


def make_multiframe(
    path: Path,
    target_bytes: int,
    *,
    frames_hint: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a Multi-frame Grayscale Word SC object of about ``target_bytes`` to ``path``.

    The header is written by pydicom; the (7FE0,0010) OW element header with its exact length is
    then appended by hand and the pixel bytes streamed in 8 MiB chunks, so memory stays flat
    at any size. Frames are 512x512x16 bit (512 KiB), as many whole frames as fit in
    ``target_bytes`` (at least one); with ``frames_hint`` there are exactly that many frames,
    square, their side the multiple of 8 that brings the total closest to ``target_bytes``. The
    pixel data length is ``NumberOfFrames * Rows * Columns * 2``; the file is that plus a ~1.3 KB
    header. Pixel values
    are a seeded base frame plus the frame number (deterministic, varies per frame).
    Because a DICOM element length is 32 bits, the pixel data must stay below 4 GiB.
    """
    if target_bytes <= 0:
        raise ValueError("target_bytes must be positive")
    if frames_hint is not None and frames_hint > 0:
        frames = frames_hint
        side = max(8, round((target_bytes / frames / 2) ** 0.5 / 8) * 8)
    else:
        side = 512
        frames = max(1, target_bytes // (side * side * 2))
    frame_bytes = side * side * 2
    pixel_length = frames * frame_bytes
    if pixel_length > _MAX_ELEMENT_LENGTH:
        raise ValueError(f"pixel data of {pixel_length} bytes exceeds the 32-bit element length")

    key = ("multiframe", seed, side, frames)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    ds.SOPInstanceUID = deterministic_uid("instance", *key)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240116"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "090000"
    ds.AccessionNumber = f"MF{seed:06d}"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Manufacturer = "Harness Medical"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "LARGE MULTIFRAME"
    ds.SeriesDescription = f"{frames} FRAMES"
    ds.PatientName = "BIG^OBJECT"
    ds.PatientID = f"MF{seed:06d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = deterministic_uid("study", *key)
    ds.SeriesInstanceUID = deterministic_uid("series", *key)
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = BaseTag(0x00181063)  # Frame Time
    ds.FrameTime = 40.0
    ds.Rows = side
    ds.Columns = side
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(ds, path)
    with path.open("ab") as fh:
        fh.write(_PIXEL_DATA_HEADER + struct.pack("<I", pixel_length))
        _stream_frames(fh, side, frames, seed)
    return path


def _stream_frames(fh: BinaryIO, side: int, frames: int, seed: int) -> None:
    base = np.random.default_rng(seed).integers(0, 65536, size=side * side, dtype="<u2")
    per_chunk = max(1, _CHUNK // base.nbytes)
    frame = 0
    while frame < frames:
        n = min(per_chunk, frames - frame)
        offsets = np.arange(frame, frame + n, dtype="<u2").reshape(n, 1)
        fh.write((base + offsets).tobytes())  # uint16 arithmetic wraps, as intended
        frame += n


# -- pydicom's bundled files ---------------------------------------------------------------

# Files bundled with pydicom that are broken on purpose (truncated, invalid values, pixel
# data that contradicts the header): they test pydicom's error handling, not ours.
_DELIBERATELY_BROKEN = (
    "truncated",
    "badVR",
    "mismatch",
    "meta_missing",
    "no_meta",
    "NoMeta",
    "embedded-sequence-delimiter",
)


def pydicom_storage_files(*, unique: bool = True) -> list[Path]:
    """pydicom's bundled test files that are proper, transferable storage objects.

    Only files shipped inside the installed pydicom package are used:
    ``pydicom.data.get_testdata_files()`` would also *download* the larger pydicom-data files,
    so the package directories are globbed directly and no network access can happen.

    Kept: Part 10 files (preamble, file meta with a transfer syntax) whose SOP class is one of
    pynetdicom's storage SOP classes, whose SOP/Study/Series Instance UIDs are valid UIDs, that
    pydicom reads completely without a warning, and that are not broken on purpose. With
    ``unique`` (default) one file per SOP Instance UID is kept: among files sharing a UID (the
    same image in several encodings) the one with the transfer syntax that is rarest among all
    candidates wins, ties broken by path, so transfer syntax coverage stays as wide as possible.
    The result is sorted by path and is the same on every run.
    """
    return list(_storage_files(unique))


@cache
def _storage_files(unique: bool) -> tuple[Path, ...]:
    candidates: list[tuple[Path, str, str]] = []
    root = Path(DATA_ROOT)
    for folder in ("test_files", "charset_files"):
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and not any(word in path.name for word in _DELIBERATELY_BROKEN):
                info = _storage_info(path)
                if info is not None:
                    candidates.append((path, *info))
    if not unique:
        return tuple(sorted(path for path, _, _ in candidates))
    rarity = Counter(syntax for _, _, syntax in candidates)
    chosen: dict[str, Path] = {}
    for path, sop_uid, _ in sorted(candidates, key=lambda c: (rarity[c[2]], str(c[0]))):
        chosen.setdefault(sop_uid, path)
    return tuple(sorted(chosen.values()))


def _storage_info(path: Path) -> tuple[str, str] | None:
    """(SOP Instance UID, transfer syntax) if ``path`` is a proper storage object, else None."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            ds = pydicom.dcmread(path)
            for element in ds.iterall():
                _ = element.value  # convert every raw element: surfaces bad values
        except Exception:
            return None
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if ds.preamble is None or not syntax:
        return None
    if ds.get("SOPClassUID") not in _STORAGE_SOP_CLASSES:
        return None
    uids = [ds.get(k) for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")]
    if not all(uid and UID(uid).is_valid for uid in uids):
        return None
    return str(ds.SOPInstanceUID), str(syntax)


# -- comparing what was sent with what arrived ---------------------------------------------


def dataset_offset(path: Path) -> int:
    """Byte offset where the dataset starts, i.e. just after the file meta group (0002).

    Parsed by hand (the meta group is always explicit VR little endian) instead of trusting
    (0002,0000) group length, which some writers get wrong or omit.
    """
    with Path(path).open("rb") as fh:
        head = fh.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            raise ValueError(f"{path}: not a DICOM Part 10 file (no DICM prefix)")
        offset = 132
        while True:
            tag = fh.read(8)
            if len(tag) < 8:
                return offset
            group = struct.unpack("<H", tag[:2])[0]
            if group != 0x0002:
                return offset
            vr = tag[4:6]
            if vr in _LONG_LENGTH_VRS:
                length = struct.unpack("<I", fh.read(4))[0]
                header = 12
            else:
                length = struct.unpack("<H", tag[6:8])[0]
                header = 8
            fh.seek(length, 1)
            offset += header + length


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta group: what a byte-faithful relay must not change.

    Reads the whole dataset into memory; for multi-GB files hash from :func:`dataset_offset`.
    """
    offset = dataset_offset(path)
    with Path(path).open("rb") as fh:
        fh.seek(offset)
        return fh.read()


def same_content(a: Path, b: Path) -> bool:
    """True if two files hold the same dataset, element by element, whatever their encoding.

    Ignores the file meta group, group lengths (gggg,0000), trailing padding (FFFC,FFFC), the
    VR as written (implicit vs explicit) and byte order (OW/OF/OD/OL values are compared as
    little endian). Values are compared as pydicom decodes them, so ``"1.0"`` and ``"1.00"`` in
    a DS element are equal. Use :func:`dataset_bytes` where bytes must be identical. Both files
    are read whole, pixel data included: meant for files up to some tens of MB.
    """
    return _canonical(_read(a)) == _canonical(_read(b))


def _read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


_WORD_VRS = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _canonical(ds: Dataset, little_endian: bool | None = None) -> list[tuple[int, Any]]:
    if little_endian is None:
        little_endian = ds.original_encoding[1] is not False
    out: list[tuple[int, Any]] = []
    for element in _elements(ds):
        if element.tag.element == 0x0000 or element.tag == 0xFFFCFFFC:
            continue
        value = element.value
        if element.VR == "SQ":
            value = [_canonical(item, little_endian) for item in value]
        elif isinstance(value, bytes) and not little_endian and element.VR in _WORD_VRS:
            width = _WORD_VRS[element.VR]
            value = np.frombuffer(value, dtype=f">u{width}").astype(f"<u{width}").tobytes()
        elif isinstance(value, pydicom.multival.MultiValue):
            value = list(value)
        out.append((int(element.tag), value))
    return out


def _elements(ds: Dataset) -> Iterator[pydicom.DataElement]:
    for tag in sorted(ds.keys()):
        yield ds[tag]
