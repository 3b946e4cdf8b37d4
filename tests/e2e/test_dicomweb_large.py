"""A 2 GB STOW-RS body and its WADO-RS retrieval keep the gateway's memory bounded.

The gateway runs as its own process (exactly as deployed) so its peak resident set size
(VmHWM in /proc/PID/status) measures the server alone. The object is one ~2 GiB multi-frame
instance streamed from disk by the client, so neither side ever holds it in memory.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import pytest

from gateway.auth.factory import builtin_issuer
from gateway.config import load_settings
from tests.harness import GatewayProcess, free_port, make_multiframe, stow, write_config

pytestmark = pytest.mark.slow

TWO_GB = 2 * 1024**3
RSS_LIMIT_MB = 600  # generous: the gateway idles at ~100-150 MB; buffering 2 GB would blow it


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def test_two_gigabyte_stow_and_wado_with_bounded_memory(tmp_path: Path) -> None:
    big = make_multiframe(tmp_path / "big.dcm", TWO_GB)
    size = big.stat().st_size
    assert size > TWO_GB - 1024**2
    config = write_config(
        tmp_path / "gw" / "gateway.yaml",
        dimse_port=free_port(),
        http_port=free_port(),
        spool=tmp_path / "gw" / "spool",
        database=tmp_path / "gw" / "gateway.db",
        destinations={},
        routes=[],
    )
    with GatewayProcess(config, tmp_path / "gw") as gateway:
        token = builtin_issuer(load_settings(config)).issue(
            "big", ["dicomweb.read", "dicomweb.write"]
        )
        headers = {"Authorization": f"Bearer {token}"}
        idle = peak_rss_mb(gateway.pid)
        started = time.monotonic()
        with httpx.Client(headers=headers, timeout=900) as client:
            response = stow(client, f"{gateway.http_url}/studies", [big])
        upload_seconds = time.monotonic() - started
        assert response.status_code == 200, response.text
        after_stow = peak_rss_mb(gateway.pid)
        instance_url = response.json()["00081199"]["Value"][0]["00081190"]["Value"][0]

        digest = hashlib.sha256()
        received = 0
        started = time.monotonic()
        with (
            httpx.Client(headers=headers, timeout=900) as client,
            client.stream(
                "GET", instance_url, headers={"Accept": "application/dicom; transfer-syntax=*"}
            ) as stream,
        ):
            assert stream.status_code == 200
            assert int(stream.headers["content-length"]) == size
            for chunk in stream.iter_bytes(8 << 20):
                digest.update(chunk)
                received += len(chunk)
        download_seconds = time.monotonic() - started
        assert received == size
        assert digest.hexdigest() == file_sha256(big)

        frame = httpx.get(
            f"{instance_url}/frames/4000",
            headers={**headers, "Accept": 'multipart/related; type="application/octet-stream"'},
            timeout=60,
        )
        assert frame.status_code == 200
        after_wado = peak_rss_mb(gateway.pid)
    print(
        f"\n2 GB STOW {upload_seconds:.1f}s, WADO {download_seconds:.1f}s; gateway VmHWM: "
        f"idle {idle:.0f} MB, after STOW {after_stow:.0f} MB, after WADO {after_wado:.0f} MB"
    )
    assert after_wado < RSS_LIMIT_MB
