"""`destinations.NAME.transform`: what loads, and the errors that name the key and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import parse_settings
from gateway.exceptions import ConfigError
from gateway.transform.settings import DEFAULT_SECRET_ENV, parse_transform

PACS = {"type": "dimse", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}


def settings_with(transform: Any, tmp_path: Path) -> Any:
    raw = {"destinations": {"pacs": {**PACS, "transform": transform}}}
    return parse_settings(raw, base_dir=tmp_path).destinations["pacs"].transform


def test_a_full_transform_loads(tmp_path: Path) -> None:
    transform = settings_with(
        {
            "deidentify": {
                "secret_env": "RESEARCH_SECRET",
                "retain_dates": True,
                "pseudonym_prefix": "TRIAL7",
            },
            "coerce": {
                "set": {"InstitutionName": "Research Site", "(0008,1030)": "Trial 7"},
                "remove": ["StationName", "(0009,0010)"],
                "map": {"Modality": {"PT": "NM"}},
            },
            "transfer_syntax": "ExplicitVRLittleEndian",
        },
        tmp_path,
    )
    assert transform.deidentify.secret_env == "RESEARCH_SECRET"
    assert (
        transform.deidentify.retain_dates
        and not transform.deidentify.retain_patient_characteristics
    )
    assert transform.deidentify.burned_in_annotation == "refuse"
    assert [(int(tag), vr, value) for tag, vr, value in transform.coerce.set] == [
        (0x00080080, "LO", "Research Site"),
        (0x00081030, "LO", "Trial 7"),
    ]
    assert [int(tag) for tag in transform.coerce.remove] == [0x00081010, 0x00090010]
    assert transform.transfer_syntax == "1.2.840.10008.1.2.1"
    assert transform.summary() == (
        "de-identify (basic, retain dates; key from $RESEARCH_SECRET), then "
        "coerce (2 set, 2 remove, 1 map), then transcode to Explicit VR Little Endian"
    )


def test_shorthand_and_absence(tmp_path: Path) -> None:
    basic = settings_with({"deidentify": "basic"}, tmp_path)
    assert basic.deidentify.secret_env == DEFAULT_SECRET_ENV and basic.coerce is None
    assert settings_with(None, tmp_path) is None
    assert parse_transform({}, "t", tmp_path) is None
    by_file = settings_with({"deidentify": {"secret_file": "deid.key"}}, tmp_path)
    assert by_file.deidentify.secret_file == tmp_path / "deid.key"
    assert by_file.deidentify.secret_env is None


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        ({"deidentify": "full"}, "supported profile is basic"),
        ({"deidentify": {"profile": "clean"}}, "supported profile is basic"),
        ({"deidentify": {"secret_env": "not a name"}}, "name of an environment variable"),
        ({"deidentify": {"secret_env": "A", "secret_file": "b"}}, "not both"),
        ({"deidentify": {"burned_in_annotation": "maybe"}}, "use refuse"),
        ({"deidentify": {"pseudonym_prefix": "lower case"}}, "pseudonym_prefix"),
        ({"deidentify": {"retain_date": True}}, "unknown key(s) retain_date"),
        ({"coerce": {"set": {"InstitutionNme": "X"}}}, "did you mean InstitutionName"),
        ({"coerce": {"set": {"SOPInstanceUID": "1.2.3"}}}, "never changes UIDs"),
        ({"coerce": {"set": {"SOPClassUID": "1.2.3"}}}, "never changes UIDs"),
        ({"coerce": {"set": {"(0002,0010)": "1.2.840.10008.1.2"}}}, "use transfer_syntax"),
        ({"coerce": {"set": {"TransferSyntaxUID": "1.2.840.10008.1.2"}}}, "file meta"),
        ({"coerce": {"remove": ["StudyInstanceUID"]}}, "never changes UIDs"),
        ({"coerce": {"remove": ["PixelData"]}}, "pixel data"),
        ({"coerce": {"remove": "StationName"}}, "must be a list"),
        ({"coerce": {"set": {"Modality": "lower"}}}, "does not fit Modality (0008,0060) (VR CS)"),
        ({"coerce": {"set": {"Rows": "many"}}}, "VR US"),
        ({"coerce": {"set": {"ReferencedImageSequence": "x"}}}, "is a sequence"),
        ({"coerce": {"set": {"(0009,1001)": "x"}}}, "private tag"),
        ({"coerce": {"set": {"SpecificCharacterSet": "ISO_IR 192"}}}, "decoded"),
        ({"coerce": {"set": {"StationName": "A"}, "remove": ["StationName"]}}, "both set"),
        ({"coerce": {"map": {"InstitutionName": {"A": 5}}}}, "map text to text"),
        ({"coerce": {"map": {"InstitutionName": {}}}}, "must map old values"),
        ({"coerce": {"rename": {}}}, "unknown key(s) rename"),
        ({"transfer_syntax": "1.2.3.4"}, "not a transfer syntax"),
        ({"transfer_syntax": "JPEG2000Lossless"}, "can transcode only into"),
        ({"transfer_syntax": "ImplicitVRLittleEndian"}, "1.2.840.10008.1.2.1"),
        ({"transcode": "x"}, "unknown key(s) transcode"),
    ],
)
def test_errors_name_the_key_and_the_fix(transform: Any, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        settings_with(transform, tmp_path)
    assert "destinations.pacs.transform" in str(info.value)
    assert message in str(info.value)


def test_dicomweb_destinations_take_a_transform_too(tmp_path: Path) -> None:
    raw = {
        "destinations": {
            "cloud": {
                "type": "dicomweb",
                "url": "http://127.0.0.1/dicomweb",
                "transform": {"transfer_syntax": "1.2.840.10008.1.2.1"},
            }
        }
    }
    cloud = parse_settings(raw, base_dir=tmp_path).destinations["cloud"]
    assert cloud.transform is not None and cloud.transform.transfer_syntax == "1.2.840.10008.1.2.1"


def test_the_documented_examples_load(tmp_path: Path) -> None:
    import re

    import yaml

    docs = Path(__file__).parents[2] / "docs"
    for name, pattern in (
        ("transforms.md", r"```yaml\n(.*?)```"),
        ("configuration.md", r"## Full example\n.*?```yaml\n(.*?)```"),
    ):
        match = re.search(pattern, (docs / name).read_text(), re.S)
        assert match is not None, name
        settings = parse_settings(yaml.safe_load(match.group(1)), base_dir=tmp_path)
        transform = settings.destinations["research"].transform
        assert transform is not None and transform.deidentify is not None, name
