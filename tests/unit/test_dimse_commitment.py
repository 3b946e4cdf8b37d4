"""Storage Commitment Push Model SCP on the listener, with pynetdicom as the modality.

The N-ACTION service and the reporter run in this process against a real listener, database
and ingest; the modality (tests/harness/commitment.py) sends N-ACTION and receives the
N-EVENT-REPORT on its own listener. Bad requests must get their precise status and leave no
row behind.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from gateway.commitment.listing import format_commitments
from gateway.commitment.reporter import CommitmentReporter
from gateway.db import Database, open_database
from gateway.db.commitments import recent_commitments
from gateway.db.deliveries import Settlement, lease_batch, settle
from gateway.db.events import audit, events_for
from gateway.dimse.ae import Limits
from gateway.dimse.association import Association
from gateway.dimse.channel import Request
from gateway.dimse.commitment import StorageCommitmentService
from gateway.dimse.handlers import DimseHandlers
from gateway.dimse.listener import DimseListener
from gateway.dimse.negotiation import AcceptedContext
from gateway.exceptions import StoreError
from gateway.ingest import Ingestor, Source
from gateway.spool.filesystem import FilesystemSpool
from tests.harness import free_port, wait_until
from tests.harness.commitment import Modality
from tests.security.pki import CertificateAuthority
from tests.unit.test_ingest import make_file, settings

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SOURCE = Source(door="dimse", calling_ae="MODALITY", called_ae="GATEWAY", peer="127.0.0.1")


@dataclass
class Side:
    port: int
    db: Database
    ingestor: Ingestor
    modality: Modality
    tmp_path: Path

    def store(self, count: int) -> list[tuple[str, str]]:
        stored = []
        for _ in range(count):
            path = make_file(self.ingestor.staging_dir)
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            self.ingestor.accept_file(path, SOURCE)
            stored.append((CT, uid))
        return stored

    def rows(self) -> list[dict[str, Any]]:
        with self.db.transaction(write=False) as cur:
            return cur.execute("SELECT * FROM commitments ORDER BY id").fetchall()


def commitment_config(modality_port: int, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "timeout": 1.0,
        "poll_interval": 0.05,
        "acse_timeout": 5,
        "dimse_timeout": 5,
        "peers": {"MODALITY": {"host": "127.0.0.1", "port": modality_port}},
        "retry": {"initial_backoff": 0.05, "max_backoff": 0.2},
    }
    config.update(overrides)
    return config


def start_side(
    tmp_path: Path,
    listen: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    **overrides: Any,
) -> tuple[Side, Any]:
    modality = Modality("MODALITY", free_port())
    raw = commitment_config(modality.port, **overrides)
    if "peer_tls" in raw:
        raw["peers"]["MODALITY"]["tls"] = raw.pop("peer_tls")
    config = settings(tmp_path, dimse={"storage_commitment": raw})
    commitment = config.dimse.storage_commitment
    assert commitment is not None
    db = open_database(config.storage.database)
    ingestor = Ingestor(config, FilesystemSpool(tmp_path / "spool"), db)
    stop, wake = threading.Event(), threading.Event()
    service = StorageCommitmentService(commitment, db, on_recorded=wake.set)
    handlers = DimseHandlers(config, ingestor, partial(audit, db), services=[service])
    listener = DimseListener(
        ("127.0.0.1", 0),
        services=handlers,
        limits=Limits(max_pdu=16384, acse_timeout=5, network_timeout=5),
        staging_dir=ingestor.staging_dir,
        max_associations=4,
    )
    listener.start()
    reporter = CommitmentReporter(
        settings=commitment, db=db, owner="test/commitment", stop=stop, wake=wake
    )
    reporter.start()
    if listen:
        modality.listen(ssl_context)

    def close() -> None:
        stop.set()
        reporter.join(10)
        listener.shutdown()
        modality.stop_listening()
        db.close()

    return Side(listener.server_address[1], db, ingestor, modality, tmp_path), close


@pytest.fixture
def side(tmp_path: Path) -> Iterator[Side]:
    value, close = start_side(tmp_path)
    yield value
    close()


def test_stored_missing_and_conflicting_instances_are_reported(side: Side) -> None:
    stored = side.store(2)
    missing = (CT, generate_uid())
    conflict = (MR, side.store(1)[0][1])  # stored as CT, asked for as MR
    status, transaction_uid = side.modality.request(side.port, [*stored, missing, conflict])
    assert int(status.Status) == 0x0000
    (row,) = side.rows()  # persisted by the time N-ACTION-RSP arrived
    assert row["transaction_uid"] == transaction_uid and row["item_count"] == 4
    report = side.modality.report(timeout=10)
    assert report.event_type == 2
    assert report.transaction_uid == transaction_uid
    assert report.committed == stored
    assert report.failed == [(*missing, 0x0112), (*conflict, 0x0119)]
    assert report.calling_ae == "GATEWAY"
    assert report.roles == (False, True), "the gateway must be accepted as SCP, not SCU"
    wait_until(lambda: side.rows()[0]["state"] == "reported", timeout=5, message="reported")
    row = side.rows()[0]
    assert (row["event_type"], row["committed_count"], row["failed_count"]) == (2, 2, 2)
    listed = format_commitments(recent_commitments(side.db))
    assert f"reported  MODALITY         {transaction_uid} 4 instance(s)" in listed
    assert "2 committed, 2 failed (event type 2), attempts 1" in listed
    kinds = [(e["kind"], e["outcome"]) for e in events_for(side.db, actor="MODALITY")]
    assert ("commitment.requested", "recorded") in kinds
    assert ("commitment.reported", "failures") in kinds


def test_only_stored_instances_get_event_type_1(side: Side) -> None:
    stored = side.store(3)
    status, transaction_uid = side.modality.request(side.port, stored)
    assert int(status.Status) == 0x0000
    report = side.modality.report(timeout=10)
    assert (report.event_type, report.transaction_uid) == (1, transaction_uid)
    assert report.committed == stored and report.failed == []


def test_an_instance_arriving_after_the_request_is_committed(side: Side) -> None:
    path = make_file(side.tmp_path / "later")
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    status, _ = side.modality.request(side.port, [(CT, uid)])
    assert int(status.Status) == 0x0000
    side.ingestor.accept_file(path, SOURCE)  # within the 1 s timeout
    report = side.modality.report(timeout=10)
    assert report.event_type == 1 and report.committed == [(CT, uid)]


def test_the_same_request_again_is_reported_again_and_another_is_refused(side: Side) -> None:
    stored = side.store(1)
    transaction_uid = generate_uid()
    first, _ = side.modality.request(side.port, stored, transaction_uid=transaction_uid)
    assert int(first.Status) == 0x0000
    assert side.modality.report(timeout=10).event_type == 1
    again, _ = side.modality.request(side.port, stored, transaction_uid=transaction_uid)
    assert int(again.Status) == 0x0000
    assert side.modality.report(timeout=10).transaction_uid == transaction_uid
    other, _ = side.modality.request(
        side.port, [(CT, generate_uid())], transaction_uid=transaction_uid
    )
    assert int(other.Status) == 0x0115
    assert "already in use" in str(other.ErrorComment)
    assert len(side.rows()) == 1


BAD_REQUESTS: dict[str, tuple[dict[str, Any], int, str]] = {
    "action type 2": ({"action_type": 2}, 0x0123, "Action Type ID 2"),
    "another SOP instance": ({"instance_uid": "1.2.3.4"}, 0x0112, "Requested SOP Instance"),
    "no action information": ({"send_info": False}, 0x0115, "no Action Information"),
    "no transaction UID": ({"transaction_uid": None}, 0x0115, "Transaction UID missing"),
    "invalid transaction UID": (
        {"transaction_uid": "1.2.abc"},
        0x0115,
        "Transaction UID is not a valid UID",
    ),
    "no referenced SOP sequence": ({"items": None}, 0x0115, "Referenced SOP Sequence missing"),
    "empty referenced SOP sequence": ({"items": []}, 0x0115, "Referenced SOP Sequence empty"),
    "invalid instance UID in item 2": (
        {"items": [(CT, "1.2.3"), (CT, "1.2.03")]},
        0x0115,
        "item 2: SOP Instance UID is not a valid UID",
    ),
    "invalid class UID in item 1": (
        {"items": [("CT", "1.2.3")]},
        0x0115,
        "item 1: SOP Class UID is not a valid UID",
    ),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_requests_get_precise_statuses_and_persist_nothing(side: Side, name: str) -> None:
    arguments, expected, comment = BAD_REQUESTS[name]
    arguments = {"items": [(CT, generate_uid())], **arguments}
    items = arguments.pop("items")
    status, _ = side.modality.request(side.port, items, **arguments)
    assert int(status.Status) == expected, status
    assert comment in str(status.ErrorComment)
    assert side.rows() == []
    (refused,) = [
        e for e in events_for(side.db, actor="MODALITY") if e["kind"].startswith("commitment.")
    ]
    assert refused["kind"] == "commitment.refused"
    assert json.loads(refused["detail"])["status"] == f"0x{expected:04X}"


def test_unreadable_action_information_is_refused(side: Side) -> None:
    info = Dataset()
    info.TransactionUID = generate_uid()
    info.ReferencedSOPSequence = [Dataset()]  # an item without UIDs
    status, _ = side.modality.request(side.port, None, info=info)
    assert int(status.Status) == 0x0115
    assert "item 1: SOP Class UID missing" in str(status.ErrorComment)
    assert side.rows() == []


def test_a_caller_without_a_report_address_is_refused(side: Side) -> None:
    stranger = Modality("STRANGER", free_port())
    status, _ = stranger.request(side.port, [(CT, generate_uid())])
    assert int(status.Status) == 0x0124
    assert "STRANGER" in str(status.ErrorComment)
    assert side.rows() == []


def test_an_unreachable_modality_gets_its_report_once_it_listens(tmp_path: Path) -> None:
    side, close = start_side(tmp_path, listen=False)
    try:
        stored = side.store(1)
        status, transaction_uid = side.modality.request(side.port, stored)
        assert int(status.Status) == 0x0000
        wait_until(lambda: side.rows()[0]["attempts"] >= 2, timeout=10, message="retried")
        assert side.rows()[0]["state"] in ("pending", "leased")
        assert "cannot associate" in str(side.rows()[0]["last_detail"])
        side.modality.listen()
        report = side.modality.report(timeout=10)
        assert (report.event_type, report.transaction_uid) == (1, transaction_uid)
    finally:
        close()


def test_a_report_nobody_takes_is_given_up_and_recorded(tmp_path: Path) -> None:
    side, close = start_side(tmp_path, listen=False, retry={"max_attempts": 2, "max_backoff": 0.1})
    try:
        status, transaction_uid = side.modality.request(side.port, side.store(1))
        assert int(status.Status) == 0x0000
        wait_until(lambda: side.rows()[0]["state"] == "failed", timeout=10, message="gave up")
        row = side.rows()[0]
        assert row["attempts"] == 2 and "gave up after 2 attempts" in row["last_detail"]
        (failed,) = [
            e for e in events_for(side.db, actor="MODALITY") if e["kind"] == "commitment.failed"
        ]
        detail = json.loads(failed["detail"])
        assert detail["transaction_uid"] == transaction_uid and detail["committed"] == 1
    finally:
        close()


def test_a_failure_status_from_the_modality_is_retried(tmp_path: Path) -> None:
    side, close = start_side(tmp_path)
    try:
        side.modality.answer = 0x0110
        status, _ = side.modality.request(side.port, side.store(1))
        assert int(status.Status) == 0x0000
        side.modality.report(timeout=10)
        side.modality.answer = 0x0000
        wait_until(lambda: side.rows()[0]["state"] == "reported", timeout=10, message="reported")
        assert side.rows()[0]["attempts"] >= 2
        assert "0x0110" not in str(side.rows()[0]["last_detail"])
    finally:
        close()


def test_a_request_that_cannot_be_persisted_is_answered_with_a_failure(
    side: Side, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durable before acknowledged: Success only after the transaction is committed."""

    def unavailable(*_args: Any, **_kwargs: Any) -> Any:
        raise StoreError("database error: disk I/O error")

    monkeypatch.setattr("gateway.dimse.commitment.record_request", unavailable)
    status, _ = side.modality.request(side.port, side.store(1))
    assert int(status.Status) == 0x0110
    assert "database unavailable" in str(status.ErrorComment)
    assert side.rows() == []


def test_reports_go_over_tls_to_a_peer_configured_with_tls(tmp_path: Path) -> None:
    ca = CertificateAuthority("commitment", tmp_path / "pki")
    listener_cert = ca.issue("127.0.0.1", server=True)
    gateway_cert = ca.issue("GATEWAY", server=False)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(listener_cert.cert, listener_cert.key)
    context.load_verify_locations(ca.cert)
    context.verify_mode = ssl.CERT_REQUIRED  # the gateway must present its certificate
    tls = {"cert": str(gateway_cert.cert), "key": str(gateway_cert.key), "ca": str(ca.cert)}
    side, close = start_side(tmp_path, ssl_context=context, peer_tls=tls)
    try:
        status, transaction_uid = side.modality.request(side.port, side.store(1))
        assert int(status.Status) == 0x0000
        report = side.modality.report(timeout=10)
        assert (report.event_type, report.transaction_uid) == (1, transaction_uid)
    finally:
        close()


class RecordingChannel:
    """Stands in for the association's channel: records what the service answers."""

    def __init__(self) -> None:
        self.responses: list[tuple[int, dict[str, Any]]] = []

    def respond(self, request: Request, status: int, data_set: Any = None, **elements: Any) -> None:
        self.responses.append((status, elements))


def test_garbage_action_information_is_refused_without_a_traceback(side: Side) -> None:
    config = settings(
        side.tmp_path,
        dimse={"storage_commitment": commitment_config(side.modality.port)},
    )
    assert config.dimse.storage_commitment is not None
    service = StorageCommitmentService(config.dimse.storage_commitment, side.db)
    command = Dataset()
    command.CommandField = 0x0130
    command.MessageID = 7
    command.RequestedSOPClassUID = "1.2.840.10008.1.20.1"
    command.RequestedSOPInstanceUID = "1.2.840.10008.1.20.1.1"
    command.ActionTypeID = 1
    context = AcceptedContext(1, "1.2.840.10008.1.20.1", "1.2.840.10008.1.2.1")
    association = Association("MODALITY", "GATEWAY", "127.0.0.1", sock=None)  # type: ignore[arg-type]
    garbage = [
        b"\x08\x00\x95\x11UI\xff\xff",  # an element longer than the data set
        bytes(range(256)),
        b"\x08\x00\x99\x11SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\x10\x00\x00\x00",
    ]
    for raw in garbage:
        channel = RecordingChannel()
        service.serve(association, channel, Request(context, command, raw))  # type: ignore[arg-type]
        ((status, elements),) = channel.responses
        assert status == 0x0115, (raw, elements)
        assert elements["ActionTypeID"] == 1
    assert side.rows() == []


def test_policy_delivered_commits_only_what_every_destination_acknowledged(
    tmp_path: Path,
) -> None:
    side, close = start_side(tmp_path, policy="delivered")
    try:
        stored = side.store(2)  # CT: routed to cloud and pacs, no workers run here
        status, waited = side.modality.request(side.port, stored)
        assert int(status.Status) == 0x0000
        report = side.modality.report(timeout=10)  # after the 1 s timeout
        assert (report.event_type, report.transaction_uid) == (2, waited)
        assert report.failed == [(*item, 0x0110) for item in stored]
        now = time.time()
        for destination in ("cloud", "pacs"):
            for leased in lease_batch(
                side.db, destination, "w", lease_seconds=60, max_instances=10, max_bytes=10**12
            ):
                settle(
                    side.db,
                    "w",
                    [
                        Settlement(
                            delivery_id=leased.delivery_id,
                            state="delivered",
                            status="0x0000",
                            detail="",
                            started_at=now,
                            finished_at=now,
                        )
                    ],
                )
        status, delivered = side.modality.request(side.port, stored)
        assert int(status.Status) == 0x0000
        report = side.modality.report(timeout=10)
        assert (report.event_type, report.transaction_uid) == (1, delivered)
        assert report.committed == stored
    finally:
        close()
