"""Serve the OpenAPI 3.1 description (`openapi/openapi.yaml`) as JSON at `/openapi.json`.

Why a checked-in YAML rather than a generated document: the spec is the contract clients
build against, reviewed like code; tests compare it with the route table and run schemathesis
against the live app, so the two cannot drift. It is read once and cached.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import yaml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.web.errors import problem

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi" / "openapi.yaml"


@functools.cache
def load_spec(path: Path = SPEC_PATH) -> dict[str, Any]:
    """The parsed spec; `DICOM_GATEWAY_OPENAPI` may point at another copy (installed wheels)."""
    location = Path(os.environ.get("DICOM_GATEWAY_OPENAPI", str(path)))
    with location.open(encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    if not isinstance(document, dict):
        raise ValueError(f"{location} is not an OpenAPI document")
    return document


async def openapi_json(request: Request) -> Response:
    """GET /openapi.json (public)."""
    try:
        return JSONResponse(load_spec())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        return problem(503, f"the OpenAPI document is not available: {exc}")
