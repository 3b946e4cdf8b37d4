"""`spool-check` over both deployments: missing bytes are found, crash leftovers only when old.

Run against (folder, SQLite) and (S3 on SeaweedFS, PostgreSQL): the check lists the spool
through the same protocol ingest writes it with, so both must agree on what is there.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.ingest import Ingestor
from gateway.spool_check import check_spool
from tests.contract.conftest import PAIRS, Backends
from tests.contract.test_database_contract import (
    SOURCE,
    dicom_file,
    gateway_settings,
    instance_key,
)

DAY = 24 * 3600.0


@pytest.mark.parametrize("backends", PAIRS, indirect=True)
def test_check_finds_missing_bytes_and_only_old_orphans(backends: Backends, tmp_path: Path) -> None:
    spool, db = backends.spool(), backends.database()
    ingestor = Ingestor(gateway_settings(tmp_path), spool, db)
    sops = [
        ingestor.accept_file(
            dicom_file(ingestor.staging_dir, f"1.2.3.200.{n}", modality="MR"), SOURCE
        ).header.sop_instance_uid
        for n in range(4)
    ]
    healthy = check_spool(db, spool, verify=True)
    assert healthy.healthy and healthy.recorded == 4 and healthy.listed == 4
    assert healthy.verified == 4 and not healthy.orphans

    lost = instance_key(db, sops[1])
    spool.delete(lost)  # e.g. a bucket lifecycle rule or a restored disk
    leftover = "1.2.3.999/1.2.3.999.1/1.2.3.999.1.1.abcdef123456.dcm"
    (ingestor.staging_dir / "orphan.dcm").write_bytes(b"never committed")
    spool.put(ingestor.staging_dir / "orphan.dcm", leftover)

    now = time.time()
    report = check_spool(db, spool, now=now, delete_orphans=True)
    assert [m.sop_instance_uid for m in report.missing] == [sops[1]]
    assert not report.healthy
    assert report.orphans == [] and report.young_unreferenced == 1, "a fresh leftover is kept"
    assert spool.exists(leftover)

    later = check_spool(db, spool, now=now + 2 * DAY, delete_orphans=True)
    assert [o.key for o in later.orphans] == [leftover] and later.deleted == 1
    assert not spool.exists(leftover)
    assert all(spool.exists(instance_key(db, sop)) for sop in sops if sop != sops[1])
    db.close()
