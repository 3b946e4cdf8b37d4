"""The worker hands an S3 destination's sender the recorded sha256 of each instance."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path

from gateway.config import S3Destination, parse_settings
from gateway.db import open_database
from gateway.forward.base import Outcome, OutgoingInstance, SendResult
from gateway.forward.worker import DeliveryWorker
from gateway.ingest import Ingestor, Source
from gateway.spool.filesystem import FilesystemSpool
from tests.unit.test_ingest import make_file


class Recorder:
    name = "lake"

    def __init__(self) -> None:
        self.seen: list[tuple[str | None, bytes]] = []

    def send(self, batch: Sequence[OutgoingInstance]) -> list[SendResult]:
        for inst in batch:
            with inst.open() as source:
                self.seen.append((inst.sha256, source.read()))
        return [SendResult(i.delivery_id, Outcome.DELIVERED, "HTTP 200") for i in batch]

    def close(self) -> None:
        pass


def test_outgoing_instances_carry_the_sha256_of_their_bytes(tmp_path: Path) -> None:
    settings = parse_settings(
        {
            "storage": {"spool": "file://spool", "database": "sqlite:///gw.db"},
            "destinations": {"lake": {"type": "s3", "url": "s3://research-lake/in"}},
            "routes": [{"name": "all", "forward": ["lake"]}],
        },
        base_dir=tmp_path,
    )
    destination = settings.destinations["lake"]
    assert isinstance(destination, S3Destination)
    db = open_database(settings.storage.database)
    spool = FilesystemSpool(tmp_path / "spool")
    ingestor = Ingestor(settings, spool, db)
    for n in range(2):
        ingestor.accept_file(
            make_file(ingestor.staging_dir, sop_uid=f"1.2.3.4.5.{n}"),
            Source(door="dimse", calling_ae="CT1", called_ae="GATEWAY", peer="127.0.0.1"),
        )
    sender = Recorder()
    worker = DeliveryWorker(
        destination=destination,
        sender=sender,
        db=db,
        spool=spool,
        delivery=settings.delivery,
        owner="test/lake/0",
        stop=threading.Event(),
        linger=0,
    )
    try:
        assert worker.run_once()
    finally:
        db.close()
    assert len(sender.seen) == 2
    for sha256, data in sender.seen:
        assert sha256 == hashlib.sha256(data).hexdigest()
