"""QIDO-RS against a running gateway with the real dicomweb-client: every level, matching
(wildcards, ranges, UID lists, fuzzy names in several character sets), includefield, paging."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.data.data_manager import DATA_ROOT

from tests.e2e.dicomweb_support import WebGateway, make_seg, make_sr, running_gateway
from tests.harness import make_ct_series

CHARSET = Path(DATA_ROOT) / "charset_files"
NON_ASCII = [CHARSET / "chrH31.dcm", CHARSET / "chrX1.dcm", CHARSET / "chrX2.dcm"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One gateway holding a 4-slice CT with a SEG and an SR, an MR study and 3 charset files."""
    root = tmp_path_factory.mktemp("qido")
    ct = make_ct_series(root / "ct", 4, rows=32, cols=32)
    mr = make_ct_series(
        root / "mr",
        2,
        rows=16,
        cols=16,
        seed=3,
        patient_name="ROE^RICHARD",
        overrides={
            "Modality": "MR",
            "StudyDate": "20230305",
            "StudyTime": "231500",
            "AccessionNumber": "MR0042",
        },
    )
    seg = make_seg(ct, root / "seg.dcm")
    sr = make_sr(ct, root / "sr.dcm")
    with running_gateway(root / "gw") as web:
        client = web.client()
        client.store_instances([pydicom.dcmread(p) for p in [*ct, seg, sr]])
        client.store_instances([pydicom.dcmread(p) for p in mr])
        for path in NON_ASCII:
            client.store_instances([pydicom.dcmread(path)])
        yield {
            "web": web,
            "ct": pydicom.dcmread(ct[0], stop_before_pixels=True),
            "mr": pydicom.dcmread(mr[0], stop_before_pixels=True),
        }


def uids(results: list[dict[str, Any]], tag: str = "0020000D") -> list[str]:
    return [item[tag]["Value"][0] for item in results]


def value(item: dict[str, Any], tag: str) -> Any:
    return item[tag]["Value"][0]


def test_search_for_studies_with_computed_attributes(store: dict[str, Any]) -> None:
    web: WebGateway = store["web"]
    ct = store["ct"]
    [study] = web.client().search_for_studies(search_filters={"PatientName": "DOE^JOHN"})
    assert value(study, "0020000D") == ct.StudyInstanceUID
    assert study["00080061"]["Value"] == ["CT", "SEG", "SR"]  # ModalitiesInStudy
    assert value(study, "00201206") == 3  # NumberOfStudyRelatedSeries
    assert value(study, "00201208") == 6  # NumberOfStudyRelatedInstances
    assert value(study, "00080056") == "ONLINE"
    assert value(study, "00081190") == f"{web.url}/studies/{ct.StudyInstanceUID}"
    assert value(study, "00100010") == {"Alphabetic": "DOE^JOHN"}
    assert value(study, "00080050") == ct.AccessionNumber


def test_wildcards_ranges_and_lists(store: dict[str, Any]) -> None:
    web: WebGateway = store["web"]
    client = web.client()
    ct, mr = store["ct"].StudyInstanceUID, store["mr"].StudyInstanceUID
    assert uids(client.search_for_studies(search_filters={"PatientName": "?OE^*"})) == [ct, mr]
    assert uids(client.search_for_studies(search_filters={"AccessionNumber": "MR00*"})) == [mr]
    assert uids(client.search_for_studies(search_filters={"StudyDate": "20230101-20231231"})) == [
        mr
    ]
    assert uids(client.search_for_studies(search_filters={"StudyDate": "20240115-"})) == [ct]
    assert uids(client.search_for_studies(search_filters={"StudyTime": "2300-2359"})) == [mr]
    assert uids(client.search_for_studies(search_filters={"ModalitiesInStudy": "SEG"})) == [ct]
    assert uids(client.search_for_studies(search_filters={"StudyInstanceUID": f"{mr},{ct}"})) == [
        ct,
        mr,
    ]


def test_fuzzy_person_names(store: dict[str, Any]) -> None:
    client = store["web"].client()
    found = client.search_for_studies(search_filters={"PatientName": "rich"}, fuzzymatching=True)
    assert uids(found) == [store["mr"].StudyInstanceUID]
    assert client.search_for_studies(search_filters={"PatientName": "rich"}) == []


def test_non_ascii_names(store: dict[str, Any]) -> None:
    client = store["web"].client()
    sops = {path.name: pydicom.dcmread(path).SOPInstanceUID for path in NON_ASCII}
    japanese = client.search_for_instances(search_filters={"PatientName": "Yamada^Tarou"})
    assert uids(japanese, "00080018") == [sops["chrH31.dcm"]]
    assert value(japanese[0], "00100010") == {
        "Alphabetic": "Yamada^Tarou",
        "Ideographic": "山田^太郎",
        "Phonetic": "やまだ^たろう",
    }
    assert uids(
        client.search_for_instances(search_filters={"PatientName": "山田"}, fuzzymatching=True),
        "00080018",
    ) == [sops["chrH31.dcm"]]
    chinese = client.search_for_instances(search_filters={"PatientName": "王"}, fuzzymatching=True)
    assert sorted(uids(chinese, "00080018")) == sorted([sops["chrX1.dcm"], sops["chrX2.dcm"]])
    names = {value(item, "00100010")["Ideographic"] for item in chinese}
    assert names == {"王^小東", "王^小东"}  # UTF-8 and GB18030 both decoded
    alphabetic = client.search_for_instances(search_filters={"PatientName": "Wang^XiaoDong"})
    assert sorted(uids(alphabetic, "00080018")) == sorted([sops["chrX1.dcm"], sops["chrX2.dcm"]])


def test_every_level(store: dict[str, Any]) -> None:
    web: WebGateway = store["web"]
    client = web.client()
    ct = store["ct"]
    series = client.search_for_series(ct.StudyInstanceUID)
    assert [value(s, "00080060") for s in series] == ["CT", "SEG", "SR"]
    assert [value(s, "00201209") for s in series] == [4, 1, 1]
    assert value(series[0], "00081190").endswith(f"/series/{ct.SeriesInstanceUID}")
    all_series = client.search_for_series(search_filters={"Modality": "MR"})
    assert uids(all_series) == [store["mr"].StudyInstanceUID]
    assert value(all_series[0], "00100010") == {"Alphabetic": "ROE^RICHARD"}  # study keys too
    instances = client.search_for_instances(ct.StudyInstanceUID, ct.SeriesInstanceUID)
    assert [value(i, "00200013") for i in instances] == [1, 2, 3, 4]
    assert value(instances[0], "00280010") == 32
    assert value(instances[0], "00081190") == (
        f"{web.url}/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}"
        f"/instances/{value(instances[0], '00080018')}"
    )
    in_study = client.search_for_instances(ct.StudyInstanceUID)
    assert len(in_study) == 6
    anywhere = client.search_for_instances(
        search_filters={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.66.4"}
    )
    assert len(anywhere) == 1
    assert len(client.search_for_instances(search_filters={"InstanceNumber": 3})) >= 1


def test_includefield(store: dict[str, Any]) -> None:
    client = store["web"].client()
    ct = store["ct"]
    [study] = client.search_for_studies(
        search_filters={"StudyInstanceUID": ct.StudyInstanceUID},
        fields=["InstitutionName", "00081090", "PatientComments"],
    )
    assert value(study, "00080080") == "Test Hospital"
    assert "00081090" in study  # ManufacturerModelName by tag
    assert study["00104000"] == {"vr": "LT"}  # asked for but absent: zero length
    [everything] = client.search_for_instances(
        ct.StudyInstanceUID,
        ct.SeriesInstanceUID,
        search_filters={"InstanceNumber": 1},
        fields=["all"],
    )
    assert value(everything, "00180060") == 120  # KVP: only with includefield=all
    assert everything["00280030"]["Value"] == [0.7, 0.7]  # PixelSpacing
    assert "7FE00010" not in everything  # pixel data is never part of a search result


def test_paging_with_warning(store: dict[str, Any]) -> None:
    web: WebGateway = store["web"]
    seen: list[str] = []
    for offset in range(0, 12, 4):
        response = httpx.get(
            f"{web.url}/instances",
            params={"limit": 4, "offset": offset},
            headers={**web.headers, "Accept": "application/dicom+json"},
        )
        assert response.status_code == 200
        page = uids(response.json(), "00080018")
        seen.extend(page)
        more = "additional results" in response.headers.get("warning", "")
        assert more == (offset + 4 < 11), (offset, response.headers.get("warning"))
    assert len(seen) == len(set(seen)) == 11


def test_empty_result_and_errors(store: dict[str, Any]) -> None:
    web: WebGateway = store["web"]
    client = web.client()
    assert client.search_for_studies(search_filters={"PatientID": "nobody"}) == []
    response = httpx.get(f"{web.url}/studies", params={"PatientID": "nobody"}, headers=web.headers)
    assert (response.status_code, response.json()) == (200, [])
    for params in (
        {"StudyDate": "2024-01-01"},
        {"limit": "-1"},
        {"fuzzymatching": "yes"},
        {"NoSuchKeyword": "x"},
        {"StudyInstanceUID": "1.2.*"},
    ):
        bad = httpx.get(f"{web.url}/studies", params=params, headers=web.headers)
        assert bad.status_code == 400, params
        assert bad.json()["detail"]
    ignored = httpx.get(
        f"{web.url}/studies", params={"BodyPartExamined": "CHEST"}, headers=web.headers
    )
    assert ignored.status_code == 200
    assert "ignored: BodyPartExamined" in ignored.headers["warning"]
    private = httpx.get(
        f"{web.url}/studies", params={"includefield": "VendorThing"}, headers=web.headers
    )
    assert private.status_code == 200
    assert "includefield VendorThing" in private.headers["warning"]
    xml = httpx.get(
        f"{web.url}/studies", headers={**web.headers, "Accept": "application/dicom+xml"}
    )
    assert xml.status_code == 406
    assert httpx.get(f"{web.url}/studies").status_code == 401
