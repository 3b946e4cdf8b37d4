"""`dicom-gateway audit-archive`: an operator moves old audit events out of a live gateway's DB.

A gateway runs (`serve`) on SQLite; two studies arrive through `dicom-gateway import` (the
real ingest path writes their audit events); one study's events are then aged three years
with SQL. The command, run in its own process as an operator would, archives exactly those
events to JSON Lines, deletes them, keeps everything else, and `trace` and `audit` still
answer for what remains.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pydicom

from tests.e2e.test_bridge import gateway_config, trace
from tests.harness import GatewayProcess, make_ct_series

OLD = time.time() - 3 * 365 * 86400.0


def _age_events(database: Path, study: str) -> list[int]:
    with sqlite3.connect(database) as connection:
        ids = [
            int(row[0])
            for row in connection.execute(
                "SELECT id FROM events WHERE study_instance_uid = ? ORDER BY id", (study,)
            )
        ]
        for n, event_id in enumerate(ids):
            connection.execute("UPDATE events SET at = ? WHERE id = ?", (OLD + n, event_id))
    return ids


def _study(folder: Path, count: int, seed: int) -> str:
    series = make_ct_series(folder, count, rows=16, cols=16, seed=seed)
    return str(pydicom.dcmread(series[0]).StudyInstanceUID)


def test_audit_archive_moves_old_events_of_a_running_gateway(tmp_path: Path) -> None:
    config = gateway_config(
        tmp_path,
        {},
        [],
        audit={"retention_days": 365, "archive_dir": "./audit-archive", "batch_size": 2},
    )
    gateway = GatewayProcess(config, tmp_path / "gw")
    gateway.start()
    try:
        old_study = _study(tmp_path / "export" / "old", 5, seed=1)
        new_study = _study(tmp_path / "export" / "new", 3, seed=2)
        imported = gateway.run_cli("import", "--config", str(config), str(tmp_path / "export"))
        assert imported.returncode == 0, imported.stdout + imported.stderr
        old_ids = _age_events(tmp_path / "gateway.db", old_study)
        assert len(old_ids) == 5
        folder = tmp_path / "audit-archive"

        dry = gateway.run_cli("audit-archive", "--config", str(config), "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "dry run: 5 audit event(s) older than" in dry.stdout
        assert "nothing was written or deleted" in dry.stdout
        assert not folder.exists()

        run = gateway.run_cli("audit-archive", "--config", str(config))
        assert run.returncode == 0, run.stdout + run.stderr
        assert "archived 5 audit event(s) older than" in run.stdout
        assert "in 3 batch(es)" in run.stdout
        assert "audit-archive: 5/5 events" in run.stderr  # the progress line's last state
        lines = [
            json.loads(line)
            for path in sorted(folder.glob("events-*.jsonl"))
            for line in path.read_text().splitlines()
        ]
        assert [line["id"] for line in lines] == old_ids
        assert {line["study_instance_uid"] for line in lines} == {old_study}

        assert len(trace(gateway, old_study)["instances"]) == 5, "instances stay"
        assert trace(gateway, old_study)["events"] == []
        assert len(trace(gateway, new_study)["events"]) == 3
        recent = gateway.run_cli("audit", "--config", str(config), "--study", new_study)
        assert recent.returncode == 0 and recent.stdout.count("instance.received") == 3

        again = gateway.run_cli("audit-archive", "--config", str(config), "--json")
        assert again.returncode == 0, again.stdout + again.stderr
        summary = json.loads(again.stdout)
        assert (summary["expired"], summary["moved"], summary["complete"]) == (0, 0, True)
        assert sum(1 for p in folder.glob("events-*.jsonl") for _ in p.open()) == 5
    finally:
        gateway.stop()


def test_retention_without_an_archive_folder_is_refused_with_the_fix(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, {}, [], audit={"retention_days": 365})
    gateway = GatewayProcess(config, tmp_path)
    checked = gateway.run_cli("check-config", "--config", str(config))
    assert checked.returncode == 2
    assert "set audit.archive_dir" in checked.stderr and "audit.archive: false" in checked.stderr

    plain = gateway_config(tmp_path, {}, [])
    result = gateway.run_cli("audit-archive", "--config", str(plain), "--older-than", "30")
    assert result.returncode == 2
    assert "audit.archive_dir is not set" in result.stderr
    result = gateway.run_cli("audit-archive", "--config", str(plain))
    assert result.returncode == 2 and "give --older-than DAYS" in result.stderr
