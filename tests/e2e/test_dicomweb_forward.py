"""AI results pushed over STOW-RS take the same routes as C-STORE: a SEG and an SR arrive at a
DIMSE PACS (DCMTK storescp), the SEG byte for byte."""

from __future__ import annotations

from pathlib import Path

import httpx
import pydicom
import pytest

from tests.e2e.dicomweb_support import make_seg, make_sr, running_gateway
from tests.harness import LOOPBACK, StoreSCP, dataset_bytes, make_ct_series, stow, wait_until

pytestmark = pytest.mark.dcmtk


def test_stowed_seg_and_sr_reach_the_pacs(tmp_path: Path, storescp: StoreSCP) -> None:
    ct = make_ct_series(tmp_path / "ct", 2, rows=32, cols=32)
    seg = make_seg(ct, tmp_path / "seg.dcm")
    sr = make_sr(ct, tmp_path / "sr.dcm")
    destinations = {
        "pacs": {"type": "dimse", "ae_title": storescp.aet, "host": LOOPBACK, "port": storescp.port}
    }
    routes = [{"name": "ai-results", "match": {"Modality": ["SEG", "SR"]}, "forward": ["pacs"]}]
    with running_gateway(tmp_path / "gw", destinations=destinations, routes=routes) as web:
        with httpx.Client(headers=web.headers) as client:
            response = stow(client, f"{web.url}/studies", [*ct, seg])
        assert response.status_code == 200, response.text
        web.client().store_instances([pydicom.dcmread(sr)])  # the real client, too
        seg_uid = pydicom.dcmread(seg, stop_before_pixels=True).SOPInstanceUID
        sr_uid = pydicom.dcmread(sr, stop_before_pixels=True).SOPInstanceUID
        wait_until(
            lambda: {seg_uid, sr_uid} <= storescp.received_sop_instance_uids(),
            timeout=30,
            message="SEG and SR at storescp",
        )
        received = storescp.file_for(seg_uid)
        assert received is not None
        assert dataset_bytes(received) == dataset_bytes(seg)
        # The CT images matched no route: they are held, not sent.
        assert storescp.received_sop_instance_uids() == {seg_uid, sr_uid}
