"""The S3 destination end to end: storescu -> gateway (DIMSE) -> objects in a SeaweedFS bucket.

* A series sent with DCMTK storescu lands under ``prefix/{study}/{series}/{sop}.dcm``, each
  object byte-identical to the gateway's spool copy, and ``dicom-gateway trace`` shows every
  delivery delivered with its key. Credentials come from the variables the config names.
* S3 is down while the series arrives: C-STORE still succeeds (the spool is local), deliveries
  wait and retry, and once S3 is back each instance is uploaded exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.db import open_database
from gateway.spool import open_spool
from tests.e2e.scu import header_ids
from tests.harness import (
    GatewayProcess,
    free_port,
    make_ct_series,
    require_binary,
    storescu,
    wait_until,
    write_config,
)
from tests.harness.seaweedfs import SeaweedFS, weed_binary

pytestmark = [pytest.mark.dcmtk, pytest.mark.s3]

FAST_RETRY = {"max_attempts": 50, "initial_backoff": 0.2, "max_backoff": 1.0}


def lake_config(tmp_path: Path, server: SeaweedFS, bucket: str) -> Path:
    return write_config(
        tmp_path / "gateway.yaml",
        dimse_port=free_port(),
        spool=tmp_path / "spool",
        database=tmp_path / "gateway.db",
        destinations={
            "lake": {
                "type": "s3",
                "url": f"s3://{bucket}/incoming",
                "endpoint_url": server.endpoint_url,
                "region": server.region,
                "access_key_id_env": "LAKE_ACCESS_KEY",
                "secret_access_key_env": "LAKE_SECRET_KEY",
                "retry": FAST_RETRY,
            }
        },
        routes=[{"name": "to-lake", "forward": ["lake"]}],
        extra={"delivery": {"poll_interval": 0.1, "lease_seconds": 30}},
    )


def lake_env(server: SeaweedFS) -> dict[str, str]:
    """Only the named variables: the test proves the gateway does not need AWS_* for them."""
    return {"LAKE_ACCESS_KEY": server.access_key, "LAKE_SECRET_KEY": server.secret_key}


def trace(gateway: GatewayProcess, study_uid: str) -> dict[str, Any]:
    result = gateway.run_cli("trace", "--config", str(gateway.config_path), "--json", study_uid)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def study_of(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def spool_copies(tmp_path: Path) -> dict[str, tuple[str, bytes]]:
    """SOP Instance UID -> (expected object key, bytes of the gateway's spool copy)."""
    db = open_database(f"sqlite:///{tmp_path / 'gateway.db'}")
    spool = open_spool(f"file://{tmp_path / 'spool'}")
    with db.transaction(write=False) as cur:
        rows = cur.execute(
            "SELECT study_instance_uid, series_instance_uid, sop_instance_uid, spool_key "
            "FROM instances"
        ).fetchall()
    copies = {}
    for row in rows:
        key = (
            f"incoming/{row['study_instance_uid']}/{row['series_instance_uid']}/"
            f"{row['sop_instance_uid']}.dcm"
        )
        with spool.open(row["spool_key"]) as source:
            copies[row["sop_instance_uid"]] = (key, source.read())
    return copies


def stored_objects(server: SeaweedFS, bucket: str) -> dict[str, bytes]:
    client = server.client()
    listing = client.list_objects_v2(Bucket=bucket)
    return {
        item["Key"]: client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        for item in listing.get("Contents", [])
    }


def test_a_series_lands_under_its_keys_byte_identical(
    tmp_path: Path, seaweedfs_server: SeaweedFS, s3_bucket: str
) -> None:
    require_binary("storescu")
    series = make_ct_series(tmp_path / "series", 6, rows=64, cols=64, seed=3)
    study = study_of(series[0])
    config = lake_config(tmp_path, seaweedfs_server, s3_bucket)
    with GatewayProcess(config, tmp_path, env=lake_env(seaweedfs_server)) as gateway:
        sent = storescu(series, gateway.dimse_port, called_aet=gateway.ae_title)
        assert sent.returncode == 0, sent.stderr
        wait_until(
            lambda: trace(gateway, study)["summary"] == {"lake": {"delivered": 6}},
            timeout=60,
            message="every instance delivered to S3",
        )
        report = trace(gateway, study)
        text = gateway.run_cli("trace", "--config", str(gateway.config_path), study).stdout
    copies = spool_copies(tmp_path)
    assert set(copies) == {header_ids(path)[1] for path in series}
    objects = stored_objects(seaweedfs_server, s3_bucket)
    assert set(objects) == {key for key, _ in copies.values()}
    for key, spooled in copies.values():
        assert objects[key] == spooled, f"{key} differs from the spool copy"
    for instance in report["instances"]:
        (delivery,) = instance["deliveries"]
        key, _ = copies[instance["sop_instance_uid"]]
        assert delivery["state"] == "delivered"
        assert delivery["last_detail"] == f"stored s3://{s3_bucket}/{key}"
    assert "delivered" in text and f"s3://{s3_bucket}/incoming/{study}/" in text


@pytest.fixture
def own_seaweedfs(tmp_path: Path) -> Iterator[SeaweedFS]:
    """A SeaweedFS of this test's own, so stopping it disturbs no other test."""
    require_binary(weed_binary())
    server = SeaweedFS(tmp_path / "seaweedfs")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_s3_down_while_sending_then_back_delivers_each_instance_once(
    tmp_path: Path, own_seaweedfs: SeaweedFS
) -> None:
    require_binary("storescu")
    bucket = own_seaweedfs.create_bucket("lake-outage")
    series = make_ct_series(tmp_path / "series", 5, rows=64, cols=64, seed=4)
    study = study_of(series[0])
    config = lake_config(tmp_path, own_seaweedfs, bucket)
    with GatewayProcess(config, tmp_path, env=lake_env(own_seaweedfs)) as gateway:
        own_seaweedfs.stop()
        try:
            sent = storescu(series, gateway.dimse_port, called_aet=gateway.ae_title)
            assert sent.returncode == 0, "the spool is local: S3 being down refuses nothing"

            def retried() -> bool:
                deliveries = [
                    d for i in trace(gateway, study)["instances"] for d in i["deliveries"]
                ]
                return len(deliveries) == 5 and all(
                    d["state"] == "pending" and d["attempts"] >= 2 for d in deliveries
                )

            wait_until(retried, timeout=60, interval=0.5, message="failed attempts recorded")
            attempt = trace(gateway, study)["instances"][0]["deliveries"][0]["attempts_log"][0]
            assert attempt["outcome"] == "pending", attempt
            assert attempt["status"] in ("connection refused", "connect failed"), attempt
            assert own_seaweedfs.endpoint_url in attempt["detail"]
        finally:
            own_seaweedfs.start()
        wait_until(
            lambda: trace(gateway, study)["summary"] == {"lake": {"delivered": 5}},
            timeout=90,
            interval=0.5,
            message="delivered after S3 came back",
        )
        report = trace(gateway, study)
    for instance in report["instances"]:
        (delivery,) = instance["deliveries"]
        outcomes = [a["outcome"] for a in delivery["attempts_log"]]
        assert outcomes.count("delivered") == 1 and outcomes[-1] == "delivered", outcomes
        assert delivery["last_detail"].startswith("stored s3://"), delivery["last_detail"]
        assert not delivery["warning"]
    copies = spool_copies(tmp_path)
    objects = stored_objects(own_seaweedfs, bucket)
    assert {key: data for key, data in copies.values()} == objects
