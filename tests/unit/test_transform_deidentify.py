"""The Basic profile, coercion and transcoding over pydicom's bundled files and generated ones.

Each test goes through `Transformer.prepare`, the code path a delivery takes: the stored file
in, a temporary Part 10 file out (read back with pydicom), the stored file untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import DATA_ROOT
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from gateway.dicom.uids import is_valid_uid
from gateway.forward.base import OutgoingInstance
from gateway.transform.errors import TransformError
from gateway.transform.keys import Keys
from gateway.transform.pipeline import Prepared, Transformer
from gateway.transform.profile import Action, basic_profile
from gateway.transform.settings import parse_transform
from tests.harness import make_ct_series, make_multiframe, pydicom_storage_files

FILES = Path(DATA_ROOT) / "test_files"
SECRET = "unit-test-secret-0123456789"
CT = FILES / "CT_small.dcm"  # explicit VR LE, 179 private elements
MR = FILES / "MR_small.dcm"
MR_J2K = FILES / "MR_small_jp2klossless.dcm"  # the same image, JPEG 2000 lossless
J2K_PRIVATE = FILES / "JPEG2000.dcm"  # compressed, with private tags
MULTIFRAME = FILES / "rtdose.dcm"  # implicit VR LE, 15 frames
SR = FILES / "test-SR.dcm"  # no pixels, nested content
BIG_ENDIAN = FILES / "MR_small_bigendian.dcm"
DEFLATED = FILES / "image_dfl.dcm"
BUNDLED = [CT, MR, MR_J2K, J2K_PRIVATE, MULTIFRAME, SR, BIG_ENDIAN, DEFLATED]


def outgoing(path: Path, delivery_id: int = 1) -> OutgoingInstance:
    header = pydicom.dcmread(path, stop_before_pixels=True)
    return OutgoingInstance(
        delivery_id=delivery_id,
        study_instance_uid=str(header.StudyInstanceUID),
        series_instance_uid=str(header.SeriesInstanceUID),
        sop_instance_uid=str(header.SOPInstanceUID),
        sop_class_uid=str(header.SOPClassUID),
        transfer_syntax_uid=str(header.file_meta.TransferSyntaxUID),
        size=path.stat().st_size,
        open=lambda: path.open("rb"),
        local_file=lambda: contextlib.nullcontext(path),
    )


def transformer(config: dict[str, Any], tmp_path: Path, secret: str = SECRET) -> Transformer:
    (tmp_path / "deid.key").write_text(secret)
    if "deidentify" in config:
        deid = config["deidentify"]
        options = {} if deid == "basic" else dict(deid)
        config = {**config, "deidentify": {"secret_file": str(tmp_path / "deid.key"), **options}}
    settings = parse_transform(config, "t", tmp_path)
    assert settings is not None
    work = tmp_path / "work"  # where the temporary copies go, to check they are removed
    work.mkdir(exist_ok=True)
    return Transformer(settings, key="t", workdir=work)


@contextlib.contextmanager
def sent(transform: Transformer, path: Path) -> Iterator[tuple[Prepared, Dataset]]:
    with transform.prepare(outgoing(path)) as prepared, prepared.instance.local_file() as out:
        # What senders rely on: the size is the file's, open() and local_file() the same bytes.
        assert prepared.instance.size == out.stat().st_size
        with prepared.instance.open() as fp:
            assert fp.read() == out.read_bytes()
        yield prepared, pydicom.dcmread(out)


def transformed(transform: Transformer, path: Path) -> tuple[Prepared, Dataset]:
    with sent(transform, path) as result:
        return result


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


DUMMIES = {"", "ANONYMIZED", "19000101", "19000101000000", "000000", "0", "000D", "None"}


def walk(dataset: Dataset) -> Iterator[tuple[int, Any, str]]:
    """(tag, value, VR) of every element at every nesting level."""
    for element in dataset:
        yield int(element.tag), element.value, str(element.VR)
        if element.VR == "SQ":
            for item in element.value:
                yield from walk(item)


def _plain(value: Any) -> Any:
    if isinstance(value, pydicom.multival.MultiValue | list):
        return tuple(str(v) for v in value)
    return str(value) if not isinstance(value, bytes) else value


# -- the Basic profile -----------------------------------------------------------------------


def leaked(original: Dataset, out: Dataset) -> tuple[int, set[tuple[str, Any]]]:
    """(how many listed attributes had values, those whose original value is still there)."""
    table = basic_profile()
    listed = {
        (tag, _plain(value))
        for tag, value, vr in walk(original)
        if table.lookup(tag) is not None
        and vr != "SQ"
        and value not in (None, b"", "")
        and _plain(value) not in DUMMIES
    }
    found = {
        (hex(tag), value)
        for tag, value, vr in walk(out)
        if vr != "SQ" and (tag, _plain(value)) in listed
    }
    return len(listed), found


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_no_listed_attribute_keeps_its_original_value(path: Path, tmp_path: Path) -> None:
    original = pydicom.dcmread(path)
    before = sha(path)
    prepared, out = transformed(transformer({"deidentify": "basic"}, tmp_path), path)
    table = basic_profile()
    count, found = leaked(original, out)
    assert count, "the file should hold attributes the profile changes"
    assert found == set()
    assert not [tag for tag, _value, _vr in walk(out) if tag >> 16 & 1], "private tags remain"
    assert str(out.PatientName) != str(original.get("PatientName", "x"))
    assert out.PatientID != original.get("PatientID", "x")
    assert str(out.PatientName) == out.PatientID and out.PatientID.startswith("ANON-")
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert out.DeidentificationMethodCodeSequence[0].CodingSchemeDesignator == "DCM"
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    for tag, value, vr in walk(out):
        if vr == "UI" and table.lookup(tag) is not None and value:
            assert str(value).startswith("2.25.") and is_valid_uid(str(value)), hex(tag)
    # The delivery's identity follows the file, and the stored file is untouched.
    assert prepared.instance.sop_instance_uid == out.SOPInstanceUID != original.SOPInstanceUID
    assert prepared.instance.study_instance_uid == out.StudyInstanceUID
    assert prepared.instance.transfer_syntax_uid == original.file_meta.TransferSyntaxUID
    assert sha(path) == before
    if "PixelData" in original:
        assert out.PixelData == original.PixelData  # byte for byte, never decoded


@pytest.mark.parametrize("path", pydicom_storage_files(), ids=lambda p: p.name)
def test_every_bundled_storage_object(path: Path, tmp_path: Path) -> None:
    """pydicom's 127 storage objects: every character set, syntax and SOP class it ships."""
    original = pydicom.dcmread(path)
    _, out = transformed(transformer({"deidentify": "basic"}, tmp_path), path)
    assert leaked(original, out)[1] == set()
    assert not [tag for tag, _value, _vr in walk(out) if tag >> 16 & 1]
    assert out.PatientIdentityRemoved == "YES" and out.SOPClassUID == original.SOPClassUID
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in original:
            assert out[keyword].value == original[keyword].value


def test_uids_are_deterministic_consistent_and_keyed(tmp_path: Path) -> None:
    series = make_ct_series(tmp_path / "series", 2, rows=16, cols=16)
    (tmp_path / "a").mkdir()
    transform = transformer({"deidentify": "basic"}, tmp_path / "a")
    first = [transformed(transform, path)[1] for path in series]
    again = [transformed(transform, path)[1] for path in series]
    originals = [pydicom.dcmread(path) for path in series]
    # Same input, same output (a re-send is idempotent) ...
    assert [d.SOPInstanceUID for d in first] == [d.SOPInstanceUID for d in again]
    # ... one study and series stay one study and series, instances stay distinct ...
    assert first[0].StudyInstanceUID == first[1].StudyInstanceUID
    assert first[0].SeriesInstanceUID == first[1].SeriesInstanceUID
    assert first[0].FrameOfReferenceUID == first[1].FrameOfReferenceUID
    assert first[0].SOPInstanceUID != first[1].SOPInstanceUID
    assert first[0].PatientID == first[1].PatientID
    for out, original in zip(first, originals, strict=True):
        assert out.StudyInstanceUID != original.StudyInstanceUID
        assert out.SeriesInstanceUID != original.SeriesInstanceUID
        assert out.SOPClassUID == original.SOPClassUID  # what it is stays known
    # ... and another key gives other UIDs and pseudonyms.
    (tmp_path / "b").mkdir()
    other = transformed(transformer({"deidentify": "basic"}, tmp_path / "b", "x" * 20), series[0])
    assert other[1].SOPInstanceUID != first[0].SOPInstanceUID
    assert other[1].PatientID != first[0].PatientID


def test_references_inside_sequences_are_remapped_consistently(tmp_path: Path) -> None:
    target, source = make_ct_series(tmp_path / "series", 2, rows=16, cols=16)
    ds = pydicom.dcmread(source)
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = pydicom.dcmread(target).SOPInstanceUID
    ds.ReferencedImageSequence = [item]
    ds.save_as(source)
    transform = transformer({"deidentify": "basic"}, tmp_path)
    referenced = transformed(transform, target)[1]
    referencing = transformed(transform, source)[1]
    ref = referencing.ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == referenced.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == ds.SOPClassUID


def test_identities_nested_in_sequences_are_removed_too(tmp_path: Path) -> None:
    path = tmp_path / "nested.dcm"
    ds = pydicom.dcmread(MR)
    source = Dataset()  # Source Patient Group Identification Sequence is not in Table E.1-1
    source.PatientID = "OTHER-MRN-1"
    source.PatientName = "ROE^RICHARD"
    source.IssuerOfPatientID = "OTHER HOSPITAL"
    ds.SourcePatientGroupIdentificationSequence = [source]
    ds.add_new(0x00080000, "UL", 1234)  # a (wrong) group length
    ds.save_as(path)
    _, out = transformed(transformer({"deidentify": "basic"}, tmp_path), path)
    (item,) = out.SourcePatientGroupIdentificationSequence
    assert item.PatientID != "OTHER-MRN-1" and str(item.PatientName) != "ROE^RICHARD"
    assert "IssuerOfPatientID" not in item
    assert 0x00080000 not in out


def test_an_overlay_goes_whole(tmp_path: Path) -> None:
    path = FILES / "examples_overlay.dcm"
    assert (0x6000, 0x3000) in pydicom.dcmread(path)
    _, out = transformed(transformer({"deidentify": "basic"}, tmp_path), path)
    assert not [tag for tag in list(out.keys()) if tag.group >> 8 == 0x60]
    assert out.PixelData == pydicom.dcmread(path).PixelData


def test_group_lengths_go_when_values_change(tmp_path: Path) -> None:
    path = tmp_path / "lengths.dcm"
    ds = pydicom.dcmread(MR)
    ds.add_new(0x00080000, "UL", 1234)
    ds.save_as(path)
    _, out = transformed(transformer({"coerce": {"set": {"StationName": "S"}}}, tmp_path), path)
    assert 0x00080000 not in out and out.StationName == "S"


def test_keys_make_valid_uuid_derived_uids() -> None:
    keys = Keys(b"k" * 16)
    uids = {keys.uid(f"1.2.3.{n}") for n in range(500)}
    assert len(uids) == 500
    for uid in uids:
        assert is_valid_uid(uid) and uid.startswith("2.25.") and len(uid) <= 44
        assert int(uid[5:]) < 2**128
    assert keys.uid("1.2.3") == Keys(b"k" * 16).uid("1.2.3 \x00")
    with pytest.raises(Exception, match="at least 16"):
        Keys(b"short")


def test_options_retain_dates_and_patient_characteristics(tmp_path: Path) -> None:
    options = {"retain_dates": True, "retain_patient_characteristics": True}
    _, out = transformed(transformer({"deidentify": options}, tmp_path), CT)
    original = pydicom.dcmread(CT)
    assert out.StudyDate == original.StudyDate and out.ContentDate == original.ContentDate
    assert out.PatientSex == original.PatientSex
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113106", "113108"]
    assert "InstitutionName" not in out or out.InstitutionName != original.InstitutionName


def test_burned_in_annotation_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "burned.dcm"
    ds = pydicom.dcmread(MR)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(path)
    with (
        pytest.raises(TransformError, match="BurnedInAnnotation is YES"),
        transformer({"deidentify": "basic"}, tmp_path).prepare(outgoing(path)),
    ):
        pass
    allowed = {"burned_in_annotation": "allow"}
    _, out = transformed(transformer({"deidentify": allowed}, tmp_path), path)
    assert out.PatientIdentityRemoved == "YES"


def test_the_action_table_is_the_standard_one() -> None:
    table = basic_profile()
    assert table.lookup(0x00100010) == ("Z", Action.EMPTY)  # Patient's Name
    assert table.lookup(0x0020000D) == ("U", Action.REPLACE_UID)  # Study Instance UID
    assert table.lookup(0x00081030) == ("X", Action.REMOVE)  # Study Description
    assert table.lookup(0x00080080) == ("X/Z/D", Action.DUMMY)  # Institution Name
    assert table.lookup(0x60043000) == ("X", Action.REMOVE)  # Overlay Data, any 60xx group
    assert table.lookup(0x00080060) is None  # Modality: kept
    assert len(table.exact) > 600


# -- coercion --------------------------------------------------------------------------------


def test_coercion_sets_removes_and_maps(tmp_path: Path) -> None:
    config = {
        "coerce": {
            "set": {"InstitutionName": "General Hospital", "(0008,1030)": "Normalized"},
            "remove": ["StationName", "(0009,0010)"],
            "map": {"Manufacturer": {"GE MEDICAL SYSTEMS": "GE"}, "Modality": {"MR": "XX"}},
        }
    }
    original = pydicom.dcmread(CT)
    assert "StationName" in original and (0x0009, 0x0010) in original
    prepared, out = transformed(transformer(config, tmp_path), CT)
    assert out.InstitutionName == "General Hospital"
    assert out.StudyDescription == "Normalized"
    assert "StationName" not in out and (0x0009, 0x0010) not in out
    assert out.Manufacturer == "GE" and out.Modality == original.Modality  # no MR -> unchanged
    assert out.SOPInstanceUID == original.SOPInstanceUID  # coercion never renames
    assert out.PatientName == original.PatientName
    assert out.PixelData == original.PixelData
    assert prepared.note == "coerced (2 set, 2 removed, 1 mapped)"


def test_coercion_runs_after_deidentification(tmp_path: Path) -> None:
    config = {"deidentify": "basic", "coerce": {"set": {"InstitutionName": "Research Site"}}}
    prepared, out = transformed(transformer(config, tmp_path), CT)
    assert out.InstitutionName == "Research Site"
    assert prepared.note.startswith("de-identified (basic profile), coerced (1 set); sent as SOP ")
    assert out.SOPInstanceUID in prepared.note and out.StudyInstanceUID in prepared.note


def test_elements_after_pixel_data_survive_the_copy(tmp_path: Path) -> None:
    path = tmp_path / "padded.dcm"
    ds = pydicom.dcmread(MR)
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 64)  # Data Set Trailing Padding
    ds.save_as(path)
    _, out = transformed(transformer({"coerce": {"set": {"StationName": "S1"}}}, tmp_path), path)
    assert out.PixelData == ds.PixelData
    assert out[0xFFFCFFFC].value == b"\x00" * 64 and out.StationName == "S1"


def test_a_large_object_is_streamed_not_loaded(tmp_path: Path) -> None:
    big = make_multiframe(tmp_path / "big.dcm", 48 * 1024 * 1024)
    transform = transformer({"deidentify": "basic"}, tmp_path)
    tracemalloc.start()
    try:
        with transform.prepare(outgoing(big)) as prepared:
            _, peak = tracemalloc.get_traced_memory()
            size = prepared.instance.size
            with prepared.instance.open() as fp:
                fp.seek(-(1 << 20), 2)
                tail = fp.read()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes while transforming a 48 MB object"
    assert abs(size - big.stat().st_size) < 4096
    with big.open("rb") as fp:
        fp.seek(-(1 << 20), 2)
        assert fp.read() == tail  # the pixels, copied as bytes


# -- transcoding -----------------------------------------------------------------------------


def test_transcoding_decodes_into_explicit_little_endian(tmp_path: Path) -> None:
    config = {"deidentify": "basic", "transfer_syntax": "ExplicitVRLittleEndian"}
    prepared, out = transformed(transformer(config, tmp_path), MR_J2K)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert prepared.instance.transfer_syntax_uid == ExplicitVRLittleEndian
    assert out.PixelData == pydicom.dcmread(MR).PixelData  # lossless: the uncompressed image
    assert "transcoded 1.2.840.10008.1.2.4.90 -> 1.2.840.10008.1.2.1" in prepared.note
    assert out.PatientIdentityRemoved == "YES"


def test_an_object_already_in_the_target_syntax_goes_out_untouched(tmp_path: Path) -> None:
    transform = transformer({"transfer_syntax": "1.2.840.10008.1.2.1"}, tmp_path)
    inst = outgoing(MR)
    with transform.prepare(inst) as prepared:
        assert prepared.instance is inst and prepared.note == ""


def test_an_undecodable_object_is_a_transform_error(tmp_path: Path) -> None:
    transform = transformer({"transfer_syntax": "1.2.840.10008.1.2.1"}, tmp_path)
    # JPEG-lossy.dcm is 12-bit JPEG Extended with a stream no installed decoder accepts.
    with (
        pytest.raises(TransformError, match="transcoding failed: cannot convert"),
        transform.prepare(outgoing(FILES / "JPEG-lossy.dcm")),
    ):
        pass
    assert list((tmp_path / "work").iterdir()) == []  # no copy left behind


def test_copies_are_removed_after_the_send(tmp_path: Path) -> None:
    transform = transformer({"deidentify": "basic"}, tmp_path)
    with transform.prepare(outgoing(CT)) as prepared, prepared.instance.local_file() as path:
        assert path.parent == tmp_path / "work" and path.is_file()
    assert not path.exists()


def test_an_unreadable_stored_file_is_a_transform_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 40)
    broken = replace(outgoing(MR), local_file=lambda: contextlib.nullcontext(path))
    with (
        pytest.raises(TransformError, match="not readable DICOM"),
        transformer({"deidentify": "basic"}, tmp_path).prepare(broken),
    ):
        pass
