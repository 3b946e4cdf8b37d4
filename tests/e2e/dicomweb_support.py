"""Shared pieces of the DICOMweb end-to-end tests: an in-process gateway with HTTP, tokens,
and DICOM objects made by highdicom (SEG, SR) from a generated CT series.

The gateway runs in the test process (`Gateway(settings).start()`: DIMSE listener, workers and
uvicorn on free loopback ports) so the suite stays fast; the 2 GB test runs it as a subprocess
to measure the server's own memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from dicomweb_client.api import DICOMwebClient
from pydicom.sr.codedict import codes

from gateway.auth.factory import builtin_issuer
from gateway.config import Settings, parse_settings
from gateway.service import Gateway
from gateway.spool import Spool
from tests.harness import LOOPBACK, free_port

SCOPES = ("dicomweb.read", "dicomweb.write")


@dataclass
class WebGateway:
    gateway: Gateway
    settings: Settings
    url: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self) -> DICOMwebClient:
        return DICOMwebClient(self.url, headers=self.headers)


@contextlib.contextmanager
def running_gateway(
    workdir: Path,
    *,
    destinations: Mapping[str, Any] | None = None,
    routes: Sequence[Mapping[str, Any]] = (),
    extra: Mapping[str, Any] | None = None,
    pin_base_url: bool = True,
    wrap_spool: Callable[[Spool], Spool] | None = None,
) -> Iterator[WebGateway]:
    """Start a gateway with HTTP on 127.0.0.1 in this process; stop it afterwards.

    `pin_base_url` sets `http.base_url`: dicomweb-client sends a Host header without the
    port, so URLs derived from the request would lack it. `wrap_spool` replaces the spool the
    HTTP side and the workers read (e.g. the same bucket through a byte-counting client).
    """
    http_port = free_port()
    url = f"http://{LOOPBACK}:{http_port}"
    raw: dict[str, Any] = {
        "node": {
            "ae_title": "GATEWAY",
            "dimse": {"host": LOOPBACK, "port": free_port()},
            "http": {"host": LOOPBACK, "port": http_port},
        },
        "storage": {"spool": "file://spool", "database": "sqlite:///gateway.db"},
        "destinations": dict(destinations or {}),
        "routes": [dict(route) for route in routes],
        "delivery": {"poll_interval": 0.05},
        **dict(extra or {}),
    }
    if pin_base_url:
        raw["http"] = {**raw.get("http", {}), "base_url": url}
    workdir.mkdir(parents=True, exist_ok=True)
    settings = parse_settings(raw, base_dir=workdir, source=workdir / "gateway.yaml")
    gateway = Gateway(settings)
    if wrap_spool is not None:
        gateway.spool = wrap_spool(gateway.spool)
    gateway.start()
    try:
        token = builtin_issuer(settings).issue("test-client", SCOPES)
        yield WebGateway(gateway, settings, url, token)
    finally:
        gateway.stop()


def make_seg(ct_files: Sequence[Path], out: Path) -> Path:
    """A binary SEG of the CT series (a box in every slice), made by highdicom."""
    sources = [pydicom.dcmread(path) for path in ct_files]
    mask = np.zeros((len(sources), sources[0].Rows, sources[0].Columns), dtype=bool)
    mask[:, 10:30, 10:30] = True
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="box",
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=90,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="dicom-gateway tests",
        manufacturer_model_name="box",
        software_versions="1",
        device_serial_number="1",
    )
    seg.save_as(out)
    return out


def make_sr(ct_files: Sequence[Path], out: Path) -> Path:
    """A Comprehensive 3D SR measurement report about the CT series, made by highdicom."""
    source = pydicom.dcmread(ct_files[0])
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="gateway-test-ai"
        ),
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="finding 1"),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.SCT.Finding, value=codes.SCT.Tissue)
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[group],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=91,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="dicom-gateway tests",
    )
    sr.save_as(out)
    return out


def split_multipart(content: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart body as (lower-cased headers, payload)."""
    boundary = ""
    for item in content_type.split(";"):
        key, _, value = item.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    assert boundary, content_type
    delimiter = b"--" + boundary.encode()
    assert content.startswith(delimiter), content[:80]
    assert content.rstrip(b"\r\n").endswith(delimiter + b"--")
    parts = []
    for chunk in content.split(b"\r\n" + delimiter)[:-1]:
        chunk = chunk.removeprefix(delimiter).removeprefix(b"\r\n")
        head, _, payload = chunk.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, payload))
    return parts
