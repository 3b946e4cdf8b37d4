"""WADO-RS against a running gateway: study/series/instance retrieval (bytes as stored, or
transcoded to Explicit VR Little Endian), metadata and bulk data, frames, rendered pictures
and thumbnails, and the 404/406/410 answers."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data.data_manager import DATA_ROOT
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from gateway.retention import purge_expired
from tests.e2e.dicomweb_support import (
    WebGateway,
    make_seg,
    make_sr,
    running_gateway,
    split_multipart,
)
from tests.harness import make_ct_series

FILES = Path(DATA_ROOT) / "test_files"
JPEG = FILES / "SC_rgb_jpeg_dcmtk.dcm"  # JPEG baseline, 1 frame
YBR = FILES / "examples_ybr_color.dcm"  # JPEG baseline, 30 frames
J2K = FILES / "JPEG2000.dcm"
BIG_ENDIAN = FILES / "SC_rgb_small_odd_big_endian.dcm"
NO_PIXELS = FILES / "rtplan.dcm"  # implicit VR, no pixel data
ALL_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("wado")
    ct = make_ct_series(root / "ct", 3, rows=64, cols=64)
    with_icon = pydicom.dcmread(ct[2])
    icon = pydicom.Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated = 32, 64, 8
    icon.PixelData = bytes(range(256)) * 8  # 2 KiB: kept out of the metadata as bulk data
    with_icon.IconImageSequence = [icon]
    with_icon.save_as(ct[2])
    seg = make_seg(ct, root / "seg.dcm")
    sr = make_sr(ct, root / "sr.dcm")
    files = [*ct, seg, sr, JPEG, YBR, J2K, BIG_ENDIAN, NO_PIXELS]
    with running_gateway(root / "gw") as web, httpx.Client(headers=web.headers) as client:
        for path in files:
            response = client.post(
                f"{web.url}/studies",
                content=path.read_bytes(),
                headers={"Content-Type": "application/dicom"},
            )
            assert response.status_code == 200, (path, response.text)
        yield {"web": web, "ct": ct, "seg": seg, "sr": sr, "files": files}


def ids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def url(web: WebGateway, path: Path, suffix: str = "") -> str:
    study, series, sop = ids(path)
    return f"{web.url}/studies/{study}/series/{series}/instances/{sop}{suffix}"


def get(web: WebGateway, target: str, accept: str | None = None, **params: Any) -> httpx.Response:
    headers = dict(web.headers)
    if accept is not None:
        headers["Accept"] = accept
    return httpx.get(target, headers=headers, params=params, timeout=60)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_retrieve_returns_the_stored_bytes(store: dict[str, Any]) -> None:
    web: WebGateway = store["web"]
    ct, seg, sr = store["ct"], store["seg"], store["sr"]
    study, series, _ = ids(ct[0])
    response = get(web, f"{web.url}/studies/{study}", ALL_DICOM)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(
        'multipart/related; type="application/dicom"'
    )
    assert int(response.headers["content-length"]) == len(response.content)
    parts = split_multipart(response.content, response.headers["content-type"])
    assert sorted(sha(p) for _, p in parts) == sorted(sha(f.read_bytes()) for f in [*ct, seg, sr])
    assert (
        parts[0][0]["content-type"]
        == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
    )
    series_parts = split_multipart(
        (r := get(web, f"{web.url}/studies/{study}/series/{series}", ALL_DICOM)).content,
        r.headers["content-type"],
    )
    assert [sha(p) for _, p in series_parts] == [sha(f.read_bytes()) for f in ct]
    instance = get(web, url(web, JPEG), ALL_DICOM)
    [(headers, payload)] = split_multipart(instance.content, instance.headers["content-type"])
    assert payload == JPEG.read_bytes()
    assert headers["content-type"].endswith(f"transfer-syntax={JPEGBaseline8Bit}")
    bare = get(web, url(web, JPEG), "application/dicom; transfer-syntax=*")
    assert bare.headers["content-type"].startswith("application/dicom")
    assert bare.content == JPEG.read_bytes()


def test_dicomweb_client_retrieval_transcodes_to_explicit_little_endian(store: dict[str, Any]):
    web: WebGateway = store["web"]
    client = web.client()
    ct = store["ct"]
    study, series, sop = ids(ct[0])
    datasets = client.retrieve_study(study)
    assert len(datasets) == 5
    assert {str(ds.file_meta.TransferSyntaxUID) for ds in datasets} == {ExplicitVRLittleEndian}
    assert len(client.retrieve_series(study, series)) == 3
    first = client.retrieve_instance(study, series, sop)
    assert np.array_equal(first.pixel_array, pydicom.dcmread(ct[0]).pixel_array)
    explicit = (("application/dicom", ExplicitVRLittleEndian),)
    for path in (JPEG, J2K, BIG_ENDIAN, NO_PIXELS):
        got = client.retrieve_instance(*ids(path), media_types=explicit)
        assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        original = pydicom.dcmread(path)
        if "PixelData" in original:
            assert np.array_equal(got.pixel_array, original.pixel_array), path.name
        assert got.SOPInstanceUID == original.SOPInstanceUID
    as_stored = client.retrieve_instance(*ids(JPEG))  # the client's default is "*"
    assert as_stored.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    in_series = client.retrieve_series(*ids(JPEG)[:2])  # its default: Explicit VR LE
    assert {ds.file_meta.TransferSyntaxUID for ds in in_series} == {ExplicitVRLittleEndian}


def test_transfer_syntax_negotiation(store: dict[str, Any]) -> None:
    web: WebGateway = store["web"]
    ct_url = url(web, store["ct"][0])
    jpeg_asked = f'multipart/related; type="application/dicom"; transfer-syntax={JPEGBaseline8Bit}'
    refused = get(web, ct_url, jpeg_asked)
    assert refused.status_code == 406
    assert "transfer-syntax=*" in refused.json()["detail"]
    fallback = get(web, ct_url, f"{jpeg_asked}, {ALL_DICOM}; q=0.5")
    assert fallback.status_code == 200
    same = get(web, url(web, JPEG), jpeg_asked)
    [(_, payload)] = split_multipart(same.content, same.headers["content-type"])
    assert payload == JPEG.read_bytes()
    study = ids(store["ct"][0])[0]
    assert get(web, f"{web.url}/studies/{study}", "application/dicom").status_code == 406
    assert get(web, ct_url, "text/html").status_code == 406


def test_metadata_and_bulk_data(store: dict[str, Any]) -> None:
    web: WebGateway = store["web"]
    client = web.client()
    ct = store["ct"]
    study, series, sop = ids(ct[2])
    metadata = client.retrieve_study_metadata(study)
    assert len(metadata) == 5
    [mine] = client.retrieve_instance_metadata(study, series, sop) and [
        item for item in metadata if item["00080018"]["Value"] == [sop]
    ]
    pixel_uri = mine["7FE00010"]["BulkDataURI"]
    assert pixel_uri == f"{url(web, ct[2])}/bulk/7FE00010"
    [pixels] = client.retrieve_bulkdata(pixel_uri)
    assert pixels == pydicom.dcmread(ct[2]).PixelData
    icon_uri = mine["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"]
    assert icon_uri.endswith("/bulk/00880200/0/7FE00010")
    assert client.retrieve_bulkdata(icon_uri) == [bytes(range(256)) * 8]
    series_metadata = client.retrieve_series_metadata(study, series)
    assert [item["00200013"]["Value"][0] for item in series_metadata] == [1, 2, 3]
    missing = get(web, f"{url(web, ct[2])}/bulk/00100010")
    assert missing.status_code == 404


def test_frames(store: dict[str, Any]) -> None:
    web: WebGateway = store["web"]
    client = web.client()
    ct = store["ct"]
    [frame] = client.retrieve_instance_frames(*ids(ct[1]), frame_numbers=[1])
    assert frame == pydicom.dcmread(ct[1]).PixelData
    original = pydicom.dcmread(YBR)
    stored_frames = list(generate_frames(original.PixelData, number_of_frames=30))
    as_stored = get(web, url(web, YBR, "/frames/1,3,30"), 'multipart/related; type="image/jpeg"')
    assert as_stored.status_code == 200
    parts = split_multipart(as_stored.content, as_stored.headers["content-type"])
    assert [p for _, p in parts] == [stored_frames[0], stored_frames[2], stored_frames[29]]
    assert parts[0][0]["content-type"].startswith("image/jpeg")
    as_stored_default = client.retrieve_instance_frames(*ids(YBR), frame_numbers=[2])
    assert as_stored_default == [stored_frames[1]]  # the client asks for */*: as stored
    decoded = client.retrieve_instance_frames(
        *ids(YBR),
        frame_numbers=[2],
        media_types=(("application/octet-stream", ExplicitVRLittleEndian),),
    )
    assert len(decoded[0]) == original.Rows * original.Columns * 3
    seg_frames = client.retrieve_instance_frames(*ids(store["seg"]), frame_numbers=[1, 2])
    assert len(seg_frames) == 2
    assert get(web, url(web, YBR, "/frames/31")).status_code == 404
    assert get(web, url(web, YBR, "/frames/0")).status_code == 400
    assert get(web, url(web, NO_PIXELS, "/frames/1")).status_code == 404


def test_rendered_and_thumbnails(store: dict[str, Any]) -> None:
    web: WebGateway = store["web"]
    client = web.client()
    ct = store["ct"]
    jpeg = client.retrieve_instance_rendered(*ids(ct[0]))
    assert Image.open(io.BytesIO(jpeg)).size == (64, 64)
    png = client.retrieve_instance_rendered(*ids(ct[0]), media_types=("image/png",))
    assert Image.open(io.BytesIO(png)).format == "PNG"
    narrow = get(web, url(web, ct[0], "/rendered"), "image/png", window="40,80")
    wide = get(web, url(web, ct[0], "/rendered"), "image/png", window="1000,4000,sigmoid")
    assert narrow.status_code == wide.status_code == 200
    assert narrow.content != wide.content
    sized = get(web, url(web, YBR, "/frames/5/rendered"), viewport="100,50")
    assert Image.open(io.BytesIO(sized.content)).size[1] <= 50
    study, series, _ = ids(ct[0])
    for target in (
        f"{web.url}/studies/{study}/thumbnail",
        f"{web.url}/studies/{study}/series/{series}/thumbnail",
        url(web, store["seg"], "/thumbnail"),
        url(web, YBR, "/frames/2/thumbnail"),
    ):
        response = get(web, target)
        assert response.status_code == 200, (target, response.text)
        assert response.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(response.content)).size) <= 128
    assert get(web, url(web, store["sr"], "/rendered")).status_code == 404
    assert get(web, url(web, ct[0], "/rendered"), "application/pdf").status_code == 406
    assert get(web, url(web, ct[0], "/rendered"), window="x").status_code == 400


def test_not_found_bad_uid_and_auth(store: dict[str, Any]) -> None:
    web: WebGateway = store["web"]
    assert get(web, f"{web.url}/studies/1.2.3.999").status_code == 404
    assert get(web, f"{web.url}/studies/1.2.3.999/metadata").status_code == 404
    assert get(web, f"{web.url}/studies/not..a.uid").status_code == 400
    assert httpx.get(url(web, store["ct"][0])).status_code == 401


def test_purged_instances_are_gone(tmp_path: Path) -> None:
    ct = make_ct_series(tmp_path / "ct", 2, rows=16, cols=16)
    study, series, sop = ids(ct[0])
    with running_gateway(tmp_path / "gw") as web, httpx.Client(headers=web.headers) as client:
        for path in ct:
            client.post(
                f"{web.url}/studies",
                content=path.read_bytes(),
                headers={"Content-Type": "application/dicom"},
            )
        assert purge_expired(web.gateway.db, web.gateway.spool, retention_hours=0) == 2
        for target in (
            f"{web.url}/studies/{study}",
            f"{web.url}/studies/{study}/metadata",
            f"{web.url}/studies/{study}/series/{series}/instances/{sop}/frames/1",
            f"{web.url}/studies/{study}/thumbnail",
        ):
            response = client.get(target)
            assert response.status_code == 410, target
            assert "storage.retention_hours" in response.json()["detail"]
        assert client.get(f"{web.url}/studies").json() == []
