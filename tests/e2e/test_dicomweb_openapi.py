"""The OpenAPI document and the running app cannot drift: the route table and the spec list the
same operations with the same scopes, and schemathesis finds no server error or spec violation
against the live app. CORS lets a browser viewer on an allowed origin call the API."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import yaml

from gateway.web.app import endpoints
from gateway.web.guard import PUBLIC
from gateway.web.openapi import SPEC_PATH
from tests.e2e.dicomweb_support import WebGateway, running_gateway
from tests.harness import make_ct_series, require_binary

VIEWER = "https://viewer.example.org"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebGateway]:
    root = tmp_path_factory.mktemp("openapi")
    ct = make_ct_series(root / "ct", 2, rows=16, cols=16)
    with running_gateway(
        root / "gw", extra={"http": {"cors": {"allow_origins": [VIEWER]}}}
    ) as gateway:
        for path in ct:
            response = httpx.post(
                f"{gateway.url}/studies",
                content=path.read_bytes(),
                headers={**gateway.headers, "Content-Type": "application/dicom"},
            )
            assert response.status_code == 200
        gateway.sample = pydicom.dcmread(ct[0], stop_before_pixels=True)  # type: ignore[attr-defined]
        yield gateway


def spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text())


def test_spec_and_route_table_list_the_same_operations() -> None:
    document = spec()
    in_spec = {
        (path, method.upper()): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    }
    in_app = {
        (endpoint.path.replace("{path:path}", "{path}"), method): endpoint
        for endpoint in endpoints()
        for method in endpoint.methods
    }
    assert set(in_spec) == set(in_app)
    default = document["security"]
    for key, endpoint in in_app.items():
        security = in_spec[key].get("security", default)
        if endpoint.scope == PUBLIC:
            assert security == [], key
        else:
            assert security == [{"bearerAuth": [endpoint.scope]}], key


def test_openapi_json_is_public_and_is_the_spec(web: WebGateway) -> None:
    response = httpx.get(f"{web.url}/openapi.json")
    assert response.status_code == 200
    assert response.json() == spec()
    assert response.json()["openapi"].startswith("3.1")


def test_schemathesis_finds_no_server_errors_or_spec_violations(
    web: WebGateway, tmp_path: Path
) -> None:
    st = Path(sys.executable).parent / "st"
    if not st.exists():
        st = Path(require_binary("st"))
    sample = web.sample  # type: ignore[attr-defined]
    config = tmp_path / "schemathesis.toml"
    # Real identifiers, so the WADO-RS operations reach their handlers instead of 404.
    config.write_text(
        "[parameters]\n"
        f'"path.study" = "{sample.StudyInstanceUID}"\n'
        f'"path.series" = "{sample.SeriesInstanceUID}"\n'
        f'"path.instance" = "{sample.SOPInstanceUID}"\n'
        '"path.path" = "7FE00010"\n'
    )
    command = [
        str(st),
        "--config-file",
        str(config),
        "run",
        f"{web.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {web.token}",
        "--checks",
        "all",
        "--max-examples",
        "25",
        "--workers",
        "2",
        "--seed",
        "20250101",
        "--request-timeout",
        "30",
        # STOW-RS bodies (multipart/related of Part 10 files) cannot be generated from a
        # schema; test_dicomweb_stow.py covers them.
        "--exclude-method",
        "POST",
        "--warnings=off",
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_COLOR": "1"},
        cwd=tmp_path,  # schemathesis keeps its example database in the working directory
        check=False,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_cors_preflight_and_exposed_headers(web: WebGateway) -> None:
    preflight = httpx.options(
        f"{web.url}/studies",
        headers={
            "Origin": VIEWER,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == VIEWER
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    refused = httpx.options(
        f"{web.url}/studies",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert refused.status_code == 400
    search = httpx.get(
        f"{web.url}/studies", params={"limit": 1}, headers={**web.headers, "Origin": VIEWER}
    )
    assert search.headers["access-control-allow-origin"] == VIEWER
    assert "warning" in search.headers["access-control-expose-headers"].lower()


def test_unknown_routes_and_methods_answer_json(web: WebGateway) -> None:
    missing = httpx.get(f"{web.url}/no/such/thing", headers=web.headers)
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    wrong = httpx.delete(f"{web.url}/studies", headers=web.headers)
    assert wrong.status_code == 405
    assert set(wrong.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


def test_cors_is_off_unless_configured(tmp_path: Path) -> None:
    with running_gateway(tmp_path / "gw") as gateway:
        response = httpx.get(f"{gateway.url}/healthz", headers={"Origin": VIEWER})
        assert "access-control-allow-origin" not in response.headers
