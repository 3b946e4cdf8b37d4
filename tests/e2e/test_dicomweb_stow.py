"""STOW-RS against a running gateway: the real dicomweb-client and hand-framed bodies.

Covers PS3.18 answers (200/202/409/400/415), FailedSOPSequence reasons, the duplicate
policies, study UID mismatch, and that every stored part is byte-identical in the spool.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from requests import HTTPError

from gateway.auth.factory import builtin_issuer
from tests.e2e.dicomweb_support import WebGateway, make_seg, make_sr, running_gateway
from tests.harness import make_ct_series, multipart_related, stow

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebGateway]:
    with running_gateway(tmp_path / "gw") as gateway:
        yield gateway


@pytest.fixture
def ct(tmp_path: Path) -> list[Path]:
    return make_ct_series(tmp_path / "ct", 3, rows=64, cols=64)


def stored_rows(web: WebGateway) -> list[dict[str, object]]:
    with web.gateway.db.transaction(write=False) as cur:
        return cur.execute("SELECT * FROM instances ORDER BY id").fetchall()


def failures(document: dict[str, object]) -> list[tuple[str | None, int]]:
    items = document.get("00081198", {}).get("Value", [])  # type: ignore[attr-defined]
    return [
        ((item["00081155"].get("Value") or [None])[0], item["00081197"]["Value"][0])
        for item in items
    ]


def test_dicomweb_client_stores_ct_seg_and_sr(web: WebGateway, ct: list[Path], tmp_path: Path):
    seg = make_seg(ct, tmp_path / "seg.dcm")
    sr = make_sr(ct, tmp_path / "sr.dcm")
    files = [*ct, seg, sr]
    datasets = [pydicom.dcmread(path) for path in files]
    result = web.client().store_instances(datasets)
    referenced = result.ReferencedSOPSequence
    assert [item.ReferencedSOPInstanceUID for item in referenced] == [
        ds.SOPInstanceUID for ds in datasets
    ]
    study = datasets[0].StudyInstanceUID
    assert result.RetrieveURL == f"{web.url}/studies/{study}"
    assert referenced[3].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # SEG
    assert referenced[0].RetrieveURL.startswith(f"{web.url}/studies/{study}/series/")
    assert "FailedSOPSequence" not in result
    rows = stored_rows(web)
    assert [row["source"] for row in rows] == ["stowrs"] * 5
    # dicomweb-client re-encodes datasets; the spool holds exactly what it sent, so compare
    # the hand-framed upload below byte for byte instead.


def test_stored_bytes_are_the_sent_bytes(web: WebGateway, ct: list[Path]) -> None:
    with httpx.Client(headers=web.headers) as client:
        response = stow(client, f"{web.url}/studies", ct)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    rows = stored_rows(web)
    assert [row["sha256"] for row in rows] == [
        hashlib.sha256(path.read_bytes()).hexdigest() for path in ct
    ]


def test_single_application_dicom_body(web: WebGateway, ct: list[Path]) -> None:
    response = httpx.post(
        f"{web.url}/studies",
        content=ct[0].read_bytes(),
        headers={**web.headers, "Content-Type": "application/dicom"},
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["00081199"]["Value"]) == 1


def test_study_uid_mismatch_fails_that_part(web: WebGateway, ct: list[Path], tmp_path: Path):
    other = make_ct_series(tmp_path / "other", 1, rows=16, cols=16, seed=7)
    study = pydicom.dcmread(ct[0]).StudyInstanceUID
    with httpx.Client(headers=web.headers) as client:
        response = stow(client, f"{web.url}/studies/{study}", [ct[0], other[0]])
    assert response.status_code == 202
    document = response.json()
    other_sop = pydicom.dcmread(other[0]).SOPInstanceUID
    assert failures(document) == [(other_sop, 0xA900)]
    assert len(document["00081199"]["Value"]) == 1
    assert document["00081190"]["Value"] == [f"{web.url}/studies/{study}"]
    assert "differs from" in response.headers["warning"]
    with httpx.Client(headers=web.headers) as client:
        only_wrong = stow(client, f"{web.url}/studies/{study}", other)
    assert only_wrong.status_code == 409
    assert failures(only_wrong.json()) == [(other_sop, 0xA900)]
    assert len(stored_rows(web)) == 1


def test_unreadable_and_unsupported_parts(web: WebGateway, ct: list[Path], tmp_path: Path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all" * 10)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(ct[1].read_bytes()[:-1000])
    not_storage = pydicom.dcmread(ct[2])
    not_storage.SOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"  # a query/retrieve SOP class
    not_storage.file_meta.MediaStorageSOPClassUID = not_storage.SOPClassUID
    query_class = tmp_path / "query.dcm"
    not_storage.save_as(query_class)
    with httpx.Client(headers=web.headers) as client:
        response = stow(client, f"{web.url}/studies", [ct[0], junk, truncated, query_class])
    assert response.status_code == 202
    reasons = failures(response.json())
    assert reasons == [
        (None, 0xC000),
        (pydicom.dcmread(ct[1], stop_before_pixels=True).SOPInstanceUID, 0xC000),
        (not_storage.SOPInstanceUID, 0x0122),
    ]
    assert len(stored_rows(web)) == 1
    assert list(web.gateway.ingestor.staging_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("policy", "status", "warning", "failure"),
    [("ignore", 202, 0xB006, None), ("reject", 409, None, 0x0111), ("overwrite", 200, None, None)],
)
def test_duplicate_policy_is_visible(
    tmp_path: Path,
    ct: list[Path],
    policy: str,
    status: int,
    warning: int | None,
    failure: int | None,
) -> None:
    changed = pydicom.dcmread(ct[0])
    changed.StudyDescription = "CHANGED"
    second = tmp_path / "second.dcm"
    changed.save_as(second)
    with (
        running_gateway(tmp_path / policy, extra={"ingest": {"duplicate_policy": policy}}) as web,
        httpx.Client(headers=web.headers) as client,
    ):
        assert stow(client, f"{web.url}/studies", [ct[0]]).status_code == 200
        again = stow(client, f"{web.url}/studies", [ct[0]])  # identical bytes: plain success
        assert again.status_code == 200 and "warning" not in again.headers
        response = stow(client, f"{web.url}/studies", [second])
        assert response.status_code == status, response.text
        document = response.json()
        if failure is not None:
            assert failures(document) == [(changed.SOPInstanceUID, failure)]
        else:
            [item] = document["00081199"]["Value"]
            assert item.get("00081196", {}).get("Value", [None])[0] == warning
        assert "duplicate" in response.headers["warning"]  # the reason, in words
        [row] = stored_rows(web)
        kept = "CHANGED" if policy == "overwrite" else "CT CHEST W/O CONTRAST"
        assert row["study_description"] == kept


def test_malformed_multipart_is_400_and_stores_nothing(web: WebGateway, ct: list[Path]) -> None:
    body, _, content_type = multipart_related(ct)
    data = b"".join(body)
    headers = {**web.headers, "Content-Type": content_type}
    cut = httpx.post(f"{web.url}/studies", content=data[: len(data) // 3], headers=headers)
    assert cut.status_code == 400
    assert "closing boundary" in cut.json()["detail"]
    garbage = httpx.post(
        f"{web.url}/studies",
        content=b"garbage without any boundary",
        headers={
            **web.headers,
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=xyz',
        },
    )
    assert garbage.status_code == 400
    no_boundary = httpx.post(
        f"{web.url}/studies",
        content=data,
        headers={**web.headers, "Content-Type": 'multipart/related; type="application/dicom"'},
    )
    assert no_boundary.status_code == 400
    assert stored_rows(web) == []
    assert list(web.gateway.ingestor.staging_dir.iterdir()) == []


def test_cut_after_complete_parts_keeps_and_reports_them(web: WebGateway, ct: list[Path]):
    body, _, content_type = multipart_related(ct)
    data = b"".join(body)
    boundary = content_type.rpartition("boundary=")[2].encode()
    end_of_second = data.index(b"\r\n--" + boundary, data.index(ct[1].read_bytes()[-64:]))
    # Cut inside the third part's headers: the second part's closing delimiter was seen.
    response = httpx.post(
        f"{web.url}/studies",
        content=data[: end_of_second + len(boundary) + 20],
        headers={**web.headers, "Content-Type": content_type},
    )
    assert response.status_code == 202
    assert len(response.json()["00081199"]["Value"]) == 2
    assert "cut off or malformed" in response.headers["warning"]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        'multipart/related; type="application/dicom+json"; boundary=x',
        "text/plain",
        "not a media type",
        None,
    ],
)
def test_wrong_content_type_is_415(web: WebGateway, ct: list[Path], content_type: str | None):
    headers = dict(web.headers)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = httpx.post(f"{web.url}/studies", content=ct[0].read_bytes(), headers=headers)
    assert response.status_code == 415, response.text
    assert response.json()["detail"]


def test_part_with_other_media_type_fails_that_part(web: WebGateway, ct: list[Path]) -> None:
    boundary = "bnd-7"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + ct[0].read_bytes()
        + f"\r\n--{boundary}\r\nContent-Type: image/jpeg\r\n\r\n".encode()
        + b"\xff\xd8\xff"
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = httpx.post(
        f"{web.url}/studies",
        content=body,
        headers={
            **web.headers,
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        },
    )
    assert response.status_code == 202
    assert failures(response.json()) == [(None, 0xC000)]


def test_auth_is_required_and_scoped(web: WebGateway, ct: list[Path]) -> None:
    data = ct[0].read_bytes()
    headers = {"Content-Type": "application/dicom"}
    anonymous = httpx.post(f"{web.url}/studies", content=data, headers=headers)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    reader = builtin_issuer(web.settings).issue("reader", ["dicomweb.read"])
    forbidden = httpx.post(
        f"{web.url}/studies",
        content=data,
        headers={**headers, "Authorization": f"Bearer {reader}"},
    )
    assert forbidden.status_code == 403
    assert stored_rows(web) == []


def test_dicomweb_client_raises_on_409(web: WebGateway, ct: list[Path], tmp_path: Path):
    other = make_ct_series(tmp_path / "other", 1, rows=16, cols=16, seed=9)
    study = pydicom.dcmread(ct[0]).StudyInstanceUID
    with pytest.raises(HTTPError) as info:
        web.client().store_instances([pydicom.dcmread(other[0])], study_instance_uid=study)
    assert info.value.response.status_code == 409


def test_response_urls_follow_the_request_host(tmp_path: Path, ct: list[Path]) -> None:
    with running_gateway(tmp_path / "gw", pin_base_url=False) as web:
        response = httpx.post(
            f"{web.url}/studies",
            content=ct[0].read_bytes(),
            headers={**web.headers, "Content-Type": "application/dicom"},
        )
        assert response.json()["00081190"]["Value"][0].startswith(f"{web.url}/studies/")
        proxied = httpx.post(
            f"{web.url}/studies",
            content=ct[1].read_bytes(),
            headers={**web.headers, "Content-Type": "application/dicom", "Host": "pacs.example"},
        )
        assert proxied.json()["00081190"]["Value"][0].startswith("http://pacs.example/studies/")
