"""The PS3.15 Basic Application Level Confidentiality Profile applied to one data set.

Works on the header only (the data set read up to Pixel Data): every action of Table E.1-1
concerns attributes, none concerns pixel values, so pixels are never decoded (what is
burned into them is out of scope: see docs/transforms.md and `burned_in_annotation`).

What is done, in order:
1. an image that declares BurnedInAnnotation YES is refused (unless configured to allow it);
2. private attributes (and their private creators) are removed, at every nesting level;
   an overlay whose Overlay Data the table removes is removed whole (it would be invalid);
3. each attribute listed in Table E.1-1 gets its action (gateway/transform/profile.py), in
   nested sequences too; UIDs are replaced with keyed, deterministic `2.25.` UIDs
   (gateway/transform/keys.py), so a study keeps its series and references across instances;
4. PatientName and PatientID become one pseudonym made from the original identity;
5. the attributes that say what was done are set: PatientIdentityRemoved YES,
   DeidentificationMethod, DeidentificationMethodCodeSequence (DCM 113100 and one code per
   retained option), LongitudinalTemporalInformationModified;
6. the file meta follows: MediaStorageSOPInstanceUID is the new SOP Instance UID, and the
   meta attributes naming the sending system or carrying private data are removed.
"""

from __future__ import annotations

from collections.abc import MutableSequence
from dataclasses import dataclass

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from gateway.transform.errors import TransformError
from gateway.transform.keys import Keys
from gateway.transform.profile import Action, basic_profile
from gateway.transform.settings import DeidentifySettings

METHOD = "PS3.15 E.1 Basic Application Confidentiality Profile"

_BASIC = ("113100", "Basic Application Confidentiality Profile")
_RETAIN_DATES = ("113106", "Retain Longitudinal Temporal Information Full Dates Option")
_RETAIN_CHARACTERISTICS = ("113108", "Retain Patient Characteristics Option")

_DATE_VRS = frozenset({"DA", "DT", "TM"})
# "K" in the Retain Patient Characteristics column of Table E.1-1.
_PATIENT_CHARACTERISTICS = frozenset(
    {
        0x00101010,  # Patient's Age
        0x00100040,  # Patient's Sex
        0x00101020,  # Patient's Size
        0x00101030,  # Patient's Weight
        0x00102160,  # Ethnic Group
        0x001021A0,  # Smoking Status
        0x001021C0,  # Pregnancy Status
        0x00102203,  # Patient's Sex Neutered
    }
)
_PATIENT_NAME = 0x00100010
_PATIENT_ID = 0x00100020
# File meta attributes that name the sending system or carry private information.
_META_REMOVED = (0x00020016, 0x00020017, 0x00020018, 0x00020026, 0x00020027, 0x00020028)
_META_PRIVATE = (0x00020100, 0x00020102)

_TEXT_DUMMY = "ANONYMIZED"
_DUMMIES: dict[str, object] = {
    "AE": "ANONYMIZED",
    "AS": "000D",
    "CS": "ANONYMIZED",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "PN": "ANONYMIZED",
    "AT": 0,
}
_NUMBER_VRS = frozenset({"FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


@dataclass(frozen=True, slots=True)
class Deidentified:
    """What was done, for the delivery record."""

    options: tuple[str, ...]  # retained options, e.g. ("retain dates",)

    def describe(self) -> str:
        extra = f" retaining {', '.join(self.options)}" if self.options else ""
        return f"de-identified (basic profile{extra})"


def deidentify(dataset: Dataset, settings: DeidentifySettings, keys: Keys) -> Deidentified:
    """Apply the Basic profile to `dataset` in place (its `file_meta` too)."""
    burned = str(dataset.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES" and settings.burned_in_annotation == "refuse":
        raise TransformError(
            "de-identification refused: BurnedInAnnotation is YES, and the Basic profile does "
            "not remove text burned into pixels; route such images to a destination without "
            "deidentify, or set deidentify.burned_in_annotation: allow for this destination"
        )
    identity = _identity(dataset)
    dataset.remove_private_tags()
    overlays = {
        tag.group
        for tag in list(dataset.keys())
        if tag.group >> 8 == 0x60 and tag.element == 0x3000
    }
    _apply_table(dataset, settings, keys)
    _drop_groups(dataset, overlays)
    pseudonym = keys.pseudonym(identity, settings.pseudonym_prefix)
    dataset.PatientName = pseudonym
    dataset.PatientID = pseudonym
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = METHOD
    codes = [_BASIC]
    options = []
    if settings.retain_dates:
        codes.append(_RETAIN_DATES)
        options.append("dates")
    if settings.retain_patient_characteristics:
        codes.append(_RETAIN_CHARACTERISTICS)
        options.append("patient characteristics")
    dataset.DeidentificationMethodCodeSequence = Sequence([_code(*code) for code in codes])
    dataset.LongitudinalTemporalInformationModified = (
        "UNMODIFIED" if settings.retain_dates else "REMOVED"
    )
    _follow_in_meta(dataset)
    return Deidentified(options=tuple(options))


def _identity(dataset: Dataset) -> str:
    """The original patient identity a pseudonym stands for (ID with its issuer, else name)."""
    patient_id = str(dataset.get("PatientID", "") or "").strip()
    if patient_id:
        issuer = str(dataset.get("IssuerOfPatientID", "") or "").strip()
        return f"id:{patient_id}\\{issuer}"
    name = str(dataset.get("PatientName", "") or "").strip()
    if name:
        return f"name:{name}"
    return f"study:{dataset.get('StudyInstanceUID', '')}"


def _apply_table(
    dataset: Dataset, settings: DeidentifySettings, keys: Keys, *, top: bool = True
) -> None:
    table = basic_profile()
    for tag in list(dataset.keys()):
        if tag.element == 0x0000:
            del dataset[tag]  # group lengths would be wrong after any change
            continue
        if top and tag in (_PATIENT_NAME, _PATIENT_ID):
            continue  # replaced by the pseudonym afterwards; nested ones get the table's action
        element = dataset[tag]
        found = table.lookup(int(tag))
        if found is None:
            if element.VR == "SQ":
                for item in element.value:
                    _apply_table(item, settings, keys, top=False)
            continue
        if _retained(element, settings):
            continue
        _act(dataset, element, found[1], settings, keys)


def _retained(element: DataElement, settings: DeidentifySettings) -> bool:
    if settings.retain_dates and element.VR in _DATE_VRS:
        return True
    return settings.retain_patient_characteristics and int(element.tag) in _PATIENT_CHARACTERISTICS


def _act(
    dataset: Dataset,
    element: DataElement,
    action: Action,
    settings: DeidentifySettings,
    keys: Keys,
) -> None:
    vr = str(element.VR).split(" or ")[0]
    if action is Action.REMOVE:
        del dataset[element.tag]
    elif action is Action.CLEAN_SEQUENCE and vr == "SQ":
        for item in element.value:
            _apply_table(item, settings, keys, top=False)
    elif vr == "UI" and action is not Action.EMPTY:
        element.value = _remapped(element.value, keys)
    elif action is Action.REPLACE_UID:
        element.value = None  # listed as a UID but holds something else: keep nothing
    elif vr == "SQ":
        # No dummy item would mean anything: an empty sequence keeps a Type 2 attribute valid.
        element.value = Sequence()
    elif action is Action.DUMMY:
        element.value = _dummy(vr)
    else:  # EMPTY, or CLEAN_SEQUENCE on a non-sequence
        element.value = None


def _drop_groups(dataset: Dataset, groups: set[int]) -> None:
    """Remove the rest of each overlay whose Overlay Data (60xx,3000) the table removed.

    An Overlay Plane without its (Type 1) data is invalid and some viewers refuse the object;
    the overlay's description (rows, columns, origin, label) is of no use without it.
    """
    for tag in [tag for tag in list(dataset.keys()) if tag.group in groups]:
        del dataset[tag]


def _remapped(value: object, keys: Keys) -> object:
    if isinstance(value, MultiValue | MutableSequence):
        return [keys.uid(str(v)) for v in value if str(v).strip()]
    if value is None or not str(value).strip():
        return value
    return keys.uid(str(value))


def _dummy(vr: str) -> object:
    if vr in _DUMMIES:
        return _DUMMIES[vr]
    if vr in _NUMBER_VRS:
        return 0
    if vr in _BINARY_VRS:
        return b"\x00" * 8  # a multiple of every binary VR's word size
    return _TEXT_DUMMY  # LO, SH, ST, LT, UT, UC, UR


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def _follow_in_meta(dataset: Dataset) -> None:
    meta = getattr(dataset, "file_meta", None)
    if not isinstance(meta, FileMetaDataset):
        return
    if "SOPInstanceUID" in dataset:
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    for tag in (*_META_REMOVED, *_META_PRIVATE):
        if tag in meta:
            del meta[tag]
    dataset.preamble = b"\x00" * 128  # a preamble may hold another format's header (TIFF)
