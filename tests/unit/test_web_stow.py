"""STOW-RS in process: group commits, one bad part among good ones, a failed commit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

import gateway.web.stow as stow
from gateway.auth.principal import SCOPE_READ, SCOPE_WRITE, Principal
from gateway.config import parse_settings
from gateway.db import Database, open_database
from gateway.ingest import IngestBatch, Ingestor
from gateway.spool.filesystem import FilesystemSpool
from gateway.web.app import create_app
from gateway.web.context import WebContext
from tests.harness import multipart_related
from tests.unit.test_ingest import make_file


class _Writer:
    def verify(self, token: str) -> Principal:
        return Principal(subject="tester", scopes=frozenset({SCOPE_READ, SCOPE_WRITE}))


@pytest.fixture
def web(tmp_path: Path) -> tuple[Starlette, Database, Path]:
    settings = parse_settings(
        {
            "node": {"dimse": {"host": "127.0.0.1", "port": 0}, "http": None},
            "storage": {"spool": "file://spool", "database": "sqlite:///gw.db"},
        },
        base_dir=tmp_path,
    )
    spool = FilesystemSpool(tmp_path / "spool")
    db = open_database(settings.storage.database)
    ingestor = Ingestor(settings, spool, db)
    context = WebContext(settings=settings, ingestor=ingestor, db=db, spool=spool)
    return create_app(context, _Writer()), db, tmp_path / "spool"


def post(app: Starlette, files: list[Path]) -> httpx.Response:
    chunks, _, content_type = multipart_related(files)

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await client.post(
                "/studies",
                content=b"".join(chunks),
                headers={"Content-Type": content_type, "Authorization": "Bearer x"},
            )

    return asyncio.run(send())


def count(db: Database, table: str) -> int:
    with db.transaction(write=False) as cur:
        row = cur.execute(f"SELECT COUNT(*) AS n FROM {table}").fetchone()
    assert row is not None
    return int(row["n"])


def spooled(spool: Path) -> list[Path]:
    return [p for p in spool.rglob("*.dcm") if ".incoming" not in p.parts]


def test_a_long_request_is_committed_in_groups_and_answered_once(
    web: tuple[Starlette, Database, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, db, _spool = web
    monkeypatch.setattr(stow, "_GROUP_PARTS", 2)
    commits: list[int] = []
    commit = IngestBatch.commit

    def counted(self: IngestBatch) -> Any:
        outcomes = commit(self)
        commits.append(len(outcomes))
        return outcomes

    monkeypatch.setattr(IngestBatch, "commit", counted)
    files = [make_file(tmp_path / "in", study_uid="1.2.3.30") for _ in range(5)]
    response = post(app, files)
    assert response.status_code == 200, response.text
    assert len(response.json()["00081199"]["Value"]) == 5
    assert commits == [2, 2, 1]
    assert count(db, "instances") == 5


def test_a_bad_part_is_refused_alone(web: tuple[Starlette, Database, Path], tmp_path: Path) -> None:
    app, db, spool = web
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a DICOM file" * 20)
    files = [make_file(tmp_path / "in"), junk, make_file(tmp_path / "in")]
    response = post(app, files)
    assert response.status_code == 202
    document = response.json()
    assert len(document["00081199"]["Value"]) == 2
    [failed] = document["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    assert count(db, "instances") == 2
    assert len(spooled(spool)) == 2


def test_a_failed_commit_stores_nothing_and_says_retry(
    web: tuple[Starlette, Database, Path], tmp_path: Path
) -> None:
    app, db, spool = web
    with db.transaction() as cur:
        cur.execute("DROP TABLE events")  # the group's one transaction will now fail
    response = post(app, [make_file(tmp_path / "in") for _ in range(3)])
    assert response.status_code == 409
    reasons = [item["00081197"]["Value"] for item in response.json()["00081198"]["Value"]]
    assert reasons == [[0xA700]] * 3
    assert count(db, "instances") == 0
    assert spooled(spool) == []
    assert list((spool / ".incoming").iterdir()) == []
