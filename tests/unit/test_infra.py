"""Deployment files parse and agree with the code (ports, scopes, config keys, paths).

No cloud or cluster is reachable from CI, so this is what can be proven here: every Terraform
reference resolves, the Cognito scopes are the ones the gateway checks, the configs shipped in
the image validate, and the Dockerfile copies files that exist.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from gateway.auth.principal import SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE
from gateway.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = sorted((ROOT / "terraform").glob("*.tf"))


def _strip(value: Any) -> Any:
    return value.strip('"') if isinstance(value, str) else value


def _terraform() -> dict[str, Any]:
    merged: dict[str, Any] = {"resource": {}, "data": {}, "variable": set(), "locals": set()}
    for path in TERRAFORM:
        with path.open() as handle:
            document = hcl2.load(handle)
        for block in document.get("resource", []):
            for kind, named in block.items():
                for name, body in named.items():
                    merged["resource"][(_strip(kind), _strip(name))] = body
        for block in document.get("data", []):
            for kind, named in block.items():
                for name in named:
                    merged["data"][(_strip(kind), _strip(name))] = named[name]
        for block in document.get("variable", []):
            merged["variable"].update(_strip(name) for name in block)
        for block in document.get("locals", []):
            merged["locals"].update(_strip(name) for name in block if not name.startswith("__"))
    return merged


def test_every_terraform_reference_resolves() -> None:
    assert TERRAFORM, "terraform/ has no .tf files"
    tf = _terraform()
    text = "\n".join(path.read_text() for path in TERRAFORM)
    for kind, name in re.findall(r"(?<![\w.])(aws_[a-z0-9_]+)\.([a-z0-9_]+)\.", text):
        assert (kind, name) in tf["resource"], f"undeclared resource {kind}.{name}"
    for kind, name in re.findall(r"data\.(aws_[a-z0-9_]+)\.([a-z0-9_]+)", text):
        assert (kind, name) in tf["data"], f"undeclared data source {kind}.{name}"
    for name in re.findall(r"var\.([a-z0-9_]+)", text):
        assert name in tf["variable"], f"undeclared variable {name}"
    for name in re.findall(r"local\.([a-z0-9_]+)", text):
        assert name in tf["locals"], f"undeclared local {name}"


def test_cognito_scopes_are_the_gateway_scopes() -> None:
    server = _terraform()["resource"][("aws_cognito_resource_server", "gateway")]
    scopes = {_strip(scope["scope_name"]) for scope in server["scope"]}
    assert scopes == {SCOPE_READ, SCOPE_WRITE, SCOPE_ADMIN}


def test_load_balancers_match_the_container_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "GATEWAY_SPOOL": "s3://bucket/spool",
        "GATEWAY_DB_PASSWORD": "secret",
        "GATEWAY_DB_HOST": "db.internal",
        "GATEWAY_AUTH_ISSUER": "https://issuer.example",
        "GATEWAY_AUTH_AUDIENCE": "client-id",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(ROOT / "infra" / "gateway.aws.yaml")
    resources = _terraform()["resource"]
    assert resources[("aws_lb_listener", "dimse")]["port"] == settings.node.dimse.port
    assert settings.node.http is not None
    assert resources[("aws_lb_target_group", "http")]["port"] == settings.node.http.port
    assert _strip(resources[("aws_lb_target_group", "http")]["health_check"][0]["path"]) == (
        "/readyz"
    )
    assert settings.storage.database.startswith("postgresql://")


def test_image_default_config_validates() -> None:
    settings = load_settings(ROOT / "infra" / "gateway.container.yaml")
    assert settings.storage.spool.startswith("file:///var/lib/dicom-gateway")


def test_yaml_files_parse() -> None:
    for path in sorted((ROOT / "infra").rglob("*.y*ml")):
        documents = list(yaml.safe_load_all(path.read_text()))
        assert documents and all(doc is not None for doc in documents), path


def test_dockerfile_copies_existing_files() -> None:
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, flags=re.MULTILINE):
        assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
