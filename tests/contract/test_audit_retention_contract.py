"""Audit retention on SQLite and PostgreSQL: old events move to the archive exactly once.

Events are made by the real ingest use case (one `instance.received` event per instance) and
aged with SQL, as if they had been recorded years ago. Crashes are real: a child process
archives with a hook that ends the process (`os._exit`) at the worst moment, after the archive
is fsynced and before the rows are deleted; then a second, normal run must leave every event
in the archive exactly once and none in the database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gateway.audit_archive import JOURNAL, EventArchive
from gateway.audit_retention import HOUSEKEEPING_BATCHES, archive_expired, cutoff_for, prune_audit
from gateway.audit_settings import AuditSettings
from gateway.db import Database, open_database
from gateway.db.events import events_for, record_event
from gateway.exceptions import ArchiveError
from gateway.report import study_trace
from tests.contract.test_database_contract import count, seed
from tests.harness.postgres import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
YEAR = 365 * 86400.0
OLD = time.time() - 3 * YEAR  # events of the "old" study are this old, spread over hours


def age_study(db: Database, study: str, *, at: float = OLD, step: float = 3600.0) -> list[int]:
    """Move the events of `study` back to `at` (one hour apart); return their ids."""
    with db.transaction() as cur:
        ids = [
            int(r["id"])
            for r in cur.execute(
                "SELECT id FROM events WHERE study_instance_uid = ? ORDER BY id", (study,)
            ).fetchall()
        ]
        for n, event_id in enumerate(ids):
            cur.execute("UPDATE events SET at = ? WHERE id = ?", (at + n * step, event_id))
    return ids


def archived(folder: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(folder.glob("events-*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def table_counts(db: Database) -> dict[str, int]:
    tables = ("instances", "deliveries", "delivery_attempts", "commitments", "spool_garbage")
    return {t: count(db, f"SELECT COUNT(*) FROM {t}") for t in tables}


def test_only_events_older_than_the_cutoff_move_and_trace_keeps_working(
    database: Database, tmp_path: Path
) -> None:
    old_study, new_study = seed(database, tmp_path, studies=2, per_study=7)
    old_ids = age_study(database, old_study)
    with database.transaction() as cur:  # one event a minute younger than the cutoff stays
        record_event(cur, "test.edge", outcome="ok", study_uid=old_study, at=cutoff_for(365) + 60)
    kept_before = {int(r["id"]) for r in events_for(database, study_uid=new_study)}
    tables_before = table_counts(database)
    archive = EventArchive(tmp_path / "archive", period="day")

    run = archive_expired(database, archive, cutoff=cutoff_for(365), batch_size=3)

    assert (run.expired, run.moved, run.batches, run.complete) == (7, 7, 3, True)
    lines = archived(tmp_path / "archive")
    assert [line["id"] for line in lines] == old_ids, "oldest first, each exactly once"
    assert {line["kind"] for line in lines} == {"instance.received"}
    assert all(line["study_instance_uid"] == old_study for line in lines)
    assert sum(run.files.values()) == 7 and all(n.startswith("events-") for n in run.files)
    assert count(database, "SELECT COUNT(*) FROM events WHERE at < ?", (run.cutoff,)) == 0
    assert {int(r["id"]) for r in events_for(database, study_uid=new_study)} == kept_before
    assert [r["kind"] for r in events_for(database, study_uid=old_study)] == ["test.edge"]
    assert table_counts(database) == tables_before, "no other table is touched"
    trace = study_trace(database, old_study)
    assert len(trace["instances"]) == 7 and [e["kind"] for e in trace["events"]] == ["test.edge"]
    assert len(study_trace(database, new_study)["events"]) == 7
    (marker,) = events_for(database, kinds=["audit.archived"])
    assert json.loads(marker["detail"])["events"] == 7 and marker["actor"] == "housekeeping"
    assert not (tmp_path / "archive" / JOURNAL).exists()
    assert all(p.stat().st_mode & 0o007 == 0 for p in (tmp_path / "archive").glob("events-*"))

    again = archive_expired(database, archive, cutoff=cutoff_for(365), batch_size=3)
    assert (again.moved, again.complete) == (0, True)
    assert len(archived(tmp_path / "archive")) == 7, "a second run appends nothing"


def test_an_archived_line_is_the_stored_event(database: Database, tmp_path: Path) -> None:
    with database.transaction() as cur:
        record_event(
            cur,
            "http.request",
            outcome="denied",
            actor="viewer-7",
            study_uid="1.2.3",
            sop_uid="1.2.3.4",
            detail={"path": "/studies/1.2.3", "status": 403, "note": "é ünïcode"},
            at=OLD,
        )
    (row,) = events_for(database, study_uid="1.2.3")
    archive_expired(database, EventArchive(tmp_path / "a"), cutoff=cutoff_for(365))
    (line,) = archived(tmp_path / "a")
    assert {k: line[k] for k in row} == row
    assert line["time"].endswith("Z") and line["time"].startswith(
        time.strftime("%Y", time.gmtime(OLD))
    )


def test_dry_run_counts_and_changes_nothing(database: Database, tmp_path: Path) -> None:
    (study,) = seed(database, tmp_path, studies=1, per_study=4)
    age_study(database, study)
    run = archive_expired(
        database, EventArchive(tmp_path / "a"), cutoff=cutoff_for(365), dry_run=True
    )
    assert (run.expired, run.moved, run.oldest) == (4, 0, pytest.approx(OLD))
    assert not (tmp_path / "a").exists()
    assert count(database, "SELECT COUNT(*) FROM events") == 4


def test_without_an_archive_old_events_are_deleted_and_the_deletion_is_audited(
    database: Database, tmp_path: Path
) -> None:
    old_study, new_study = seed(database, tmp_path, studies=2, per_study=3)
    age_study(database, old_study)
    run = archive_expired(database, None, cutoff=cutoff_for(365), actor="cli:ops")
    assert (run.moved, run.archived, run.files) == (3, False, {})
    assert events_for(database, study_uid=old_study) == []
    assert len(events_for(database, study_uid=new_study)) == 3
    (marker,) = events_for(database, kinds=["audit.archived"])
    assert (marker["outcome"], marker["actor"]) == ("deleted", "cli:ops")


def _crash_while_archiving(database_url: str, folder: Path, batch_size: int) -> None:
    """Archive in a child process that dies after the archive is fsynced, before the delete."""
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from gateway.audit_archive import EventArchive\n"
        "from gateway.audit_retention import archive_expired, cutoff_for\n"
        "from gateway.db import open_database\n"
        "batches = []\n"
        "def crash():\n"
        "    batches.append(1)\n"
        "    if len(batches) == 2:\n"
        "        os._exit(17)\n"
        "archive_expired(open_database(sys.argv[1]), EventArchive(Path(sys.argv[2])),\n"
        "                cutoff=cutoff_for(365), batch_size=int(sys.argv[3]),\n"
        "                before_delete=crash)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script, database_url, str(folder), str(batch_size)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 17, child.stderr


def test_a_crash_between_archive_and_delete_loses_nothing_and_duplicates_nothing(
    database: Database, database_url: str, tmp_path: Path
) -> None:
    (study,) = seed(database, tmp_path, studies=1, per_study=10)
    ids = age_study(database, study)
    folder = tmp_path / "archive"

    _crash_while_archiving(database_url, folder, batch_size=4)

    # The crash left batch 2 in the archive and still in the database (the journal says so).
    assert [line["id"] for line in archived(folder)] == ids[:8]
    assert count(database, "SELECT COUNT(*) FROM events") == 6
    assert (folder / JOURNAL).exists()

    run = archive_expired(database, EventArchive(folder), cutoff=cutoff_for(365), batch_size=4)

    assert run.recovered is not None and "had not been deleted" in run.recovered
    lines = archived(folder)
    assert [line["id"] for line in lines] == ids, "every event exactly once, in order"
    assert Counter(line["id"] for line in lines).most_common(1)[0][1] == 1
    assert count(database, "SELECT COUNT(*) FROM events WHERE kind = 'instance.received'") == 0
    assert not (folder / JOURNAL).exists()


def test_a_crash_after_the_delete_committed_keeps_the_archived_lines(
    database: Database, tmp_path: Path
) -> None:
    (study,) = seed(database, tmp_path, studies=1, per_study=3)
    ids = age_study(database, study)
    folder = tmp_path / "archive"
    archive_expired(database, EventArchive(folder), cutoff=cutoff_for(365))
    name = next(folder.glob("events-*.jsonl")).name
    # The state a crash leaves after COMMIT and before the journal is removed.
    (folder / JOURNAL).write_text(json.dumps({"ids": ids, "sizes": {name: 0}}))

    run = archive_expired(database, EventArchive(folder), cutoff=cutoff_for(365))

    assert [line["id"] for line in archived(folder)] == ids, "deleted rows keep their lines"
    assert run.recovered is not None and "already archived" in run.recovered


def test_one_archiver_per_folder(database: Database, tmp_path: Path) -> None:
    archive = EventArchive(tmp_path / "a")
    with archive.open(), pytest.raises(ArchiveError, match="another process"):
        archive_expired(database, EventArchive(tmp_path / "a"), cutoff=cutoff_for(365))
    with pytest.raises(ArchiveError, match=r"only inside"):
        archive.append([])


@pytest.mark.postgres
def test_replicas_archiving_together_move_each_event_once(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.create_database()
    opened = [open_database(url) for _ in range(4)]
    db = opened[0]
    studies = seed(db, tmp_path, studies=4, per_study=10)
    ids = [i for study in studies for i in age_study(db, study)]
    errors: list[BaseException] = []

    def replica(n: int) -> None:
        try:
            archive_expired(
                opened[n], EventArchive(tmp_path / f"r{n}"), cutoff=cutoff_for(365), batch_size=5
            )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(n,)) for n in (1, 2, 3)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors
        moved = [line["id"] for n in (1, 2, 3) for line in archived(tmp_path / f"r{n}")]
        assert sorted(moved) == sorted(ids), "each event in exactly one replica's archive"
        assert count(db, "SELECT COUNT(*) FROM events WHERE kind = 'instance.received'") == 0
    finally:
        for each in opened:
            each.close()


def test_a_housekeeping_pass_is_bounded_and_the_next_one_goes_on(
    database: Database, tmp_path: Path
) -> None:
    (study,) = seed(database, tmp_path, studies=1, per_study=HOUSEKEEPING_BATCHES + 3)
    age_study(database, study)
    settings = AuditSettings(retention_days=365, archive_dir=tmp_path / "a", batch_size=1)

    first = prune_audit(database, settings)
    assert (first.moved, first.batches, first.complete) == (
        HOUSEKEEPING_BATCHES,
        HOUSEKEEPING_BATCHES,
        False,
    )
    second = prune_audit(database, settings)
    assert (second.moved, second.complete) == (3, True)
    assert len(archived(tmp_path / "a")) == HOUSEKEEPING_BATCHES + 3


def test_rows_are_deleted_only_once_their_batch_is_in_the_archive(
    database: Database, connect: Any, tmp_path: Path
) -> None:
    (study,) = seed(database, tmp_path, studies=1, per_study=6)
    ids = age_study(database, study)
    other = connect()  # another process's view: only what is committed
    folder = tmp_path / "a"
    seen: list[tuple[list[int], int]] = []

    def check() -> None:
        written = [line["id"] for line in archived(folder)]
        present = count(other, "SELECT COUNT(*) FROM events WHERE kind = 'instance.received'")
        seen.append((written, present))

    archive_expired(
        database, EventArchive(folder), cutoff=cutoff_for(365), batch_size=4, before_delete=check
    )
    assert seen == [(ids[:4], 6), (ids, 2)], "each batch archived while its rows still exist"
