"""The circuit breaker around a real DeliveryWorker, its config keys, gauges and alert rules.

The database and spool are real (SQLite, a folder); the sender is a stand-in whose peer can be
switched off and on, because these tests are about when the worker sends, not the wire.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import Settings, parse_settings
from gateway.db import Database, open_database
from gateway.db.events import events_for
from gateway.db.health import health_row
from gateway.exceptions import ConfigError
from gateway.forward.base import Outcome, OutgoingInstance, ProbeResult, SendResult
from gateway.forward.health import Breaker, signal_of
from gateway.forward.worker import DeliveryWorker
from gateway.ingest import Ingestor, Source
from gateway.spool.filesystem import FilesystemSpool
from gateway.telemetry import Telemetry
from tests.unit.test_ingest import make_file

SOURCE = Source(door="dimse", calling_ae="CT1", called_ae="GATEWAY", peer="127.0.0.1")
ROOT = Path(__file__).resolve().parents[2]


def config(**destination: Any) -> dict[str, Any]:
    return {
        "storage": {"spool": "file://spool", "database": "sqlite:///gw.db"},
        "destinations": {
            "pacs": {"type": "dimse", "ae_title": "PACS", "host": "127.0.0.1", "port": 9}
            | destination,
            "backup": {"type": "dimse", "ae_title": "BACKUP", "host": "127.0.0.1", "port": 10},
        },
        "routes": [{"name": "all", "forward": ["pacs"]}],
    }


# -- config --------------------------------------------------------------------------------


def test_health_and_failover_keys_are_read(tmp_path: Path) -> None:
    raw = config(failover={"to": "backup", "after": 120}, health={"failure_threshold": 2})
    raw["health"] = {"probe_interval": 10}
    settings = parse_settings(raw, base_dir=tmp_path)
    assert settings.health.policy("pacs").failure_threshold == 2
    assert settings.health.policy("pacs").probe_interval == 10  # from the section
    assert settings.health.policy("backup").failure_threshold == 5  # the default
    failover = settings.health.failover["pacs"]
    assert (failover.to, failover.after) == ("backup", 120)
    assert "backup" not in settings.health.failover


@pytest.mark.parametrize(
    ("failover", "message"),
    [
        ({"to": "nowhere", "after": 5}, r"destinations\.pacs\.failover\.to is 'nowhere'.*backup"),
        ({"to": "pacs", "after": 5}, r"failover\.to is 'pacs' itself; name another"),
        ({"to": "backup"}, r"destinations\.pacs\.failover\.after is required"),
        ({"to": "backup", "after": -1}, r"failover\.after is -1; it must be at least 0"),
        ({"to": "backup", "after": 1, "when": 2}, r"failover: unknown key\(s\) when"),
        ({"after": 1}, r"failover\.to is required"),
    ],
)
def test_failover_errors_name_the_key_and_the_fix(
    failover: dict[str, Any], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings(config(failover=failover), base_dir=tmp_path)


def test_a_failover_cycle_is_refused(tmp_path: Path) -> None:
    raw = config(failover={"to": "backup", "after": 5})
    raw["destinations"]["backup"]["failover"] = {"to": "pacs", "after": 5}
    with pytest.raises(ConfigError, match=r"backup -> pacs -> backup is a cycle; remove"):
        parse_settings(raw, base_dir=tmp_path)


def test_health_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"destinations\.pacs\.health\.failure_threshold is 0"):
        parse_settings(config(health={"failure_threshold": 0}), base_dir=tmp_path)
    raw = config()
    raw["health"] = {"threshold": 3}
    with pytest.raises(ConfigError, match=r"health: unknown key\(s\) threshold"):
        parse_settings(raw, base_dir=tmp_path)


# -- what a batch says -----------------------------------------------------------------------


def result(outcome: Outcome, status: str = "0x0000", detail: str = "") -> SendResult:
    return SendResult(1, outcome, status, detail)


def test_a_batch_signals_success_failure_or_partial() -> None:
    ok, lost = Outcome.DELIVERED, Outcome.TRANSIENT
    assert signal_of([result(ok), result(ok)]).kind == "success"  # type: ignore[union-attr]
    failure = signal_of(
        [result(lost, "association aborted", "peer reset"), result(lost, "not sent", "after")]
    )
    assert failure is not None and failure.kind == "failure"
    assert failure.error == "association aborted - peer reset"
    partial = signal_of([result(ok), result(lost, "0xA700", "out of resources")])
    assert partial is not None and (partial.kind, partial.delivered) == ("partial", 1)
    refused = signal_of([result(Outcome.PERMANENT, "0xA900", "wrong class")])
    assert refused is not None and refused.kind == "partial", "the peer answered"
    # our own failures say nothing about the destination
    assert signal_of([result(lost, "spool", "unreadable"), None]) is None
    assert signal_of([result(lost, "internal error", "bug")]) is None


# -- the worker behind the breaker -----------------------------------------------------------


@dataclass
class Peer:
    """A sender whose destination is reachable or not; remembers every batch's size."""

    name: str = "pacs"
    reachable: bool = False
    batches: list[tuple[bool, int]] = field(default_factory=list)

    def send(self, batch: Sequence[OutgoingInstance]) -> list[SendResult]:
        self.batches.append((self.reachable, len(batch)))
        if self.reachable:
            return [SendResult(i.delivery_id, Outcome.DELIVERED, "0x0000") for i in batch]
        return [
            SendResult(i.delivery_id, Outcome.TRANSIENT, "connect failed", "connection refused")
            for i in batch
        ]

    def close(self) -> None:
        pass


@pytest.fixture
def breaker_settings(tmp_path: Path) -> Settings:
    raw = config(
        retry={"max_attempts": 100, "initial_backoff": 0.05, "max_backoff": 0.1},
        health={"failure_threshold": 3, "probe_interval": 0.2},
    )
    raw["delivery"] = {"poll_interval": 0.02, "linger": 0}
    return parse_settings(raw, base_dir=tmp_path)


@pytest.fixture
def db(breaker_settings: Settings) -> Iterator[Database]:
    database = open_database(breaker_settings.storage.database)
    yield database
    database.close()


def wait_for(condition: Any, message: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.01)


def test_the_worker_probes_with_one_instance_while_down_and_resumes_when_up(
    breaker_settings: Settings, db: Database, tmp_path: Path
) -> None:
    spool = FilesystemSpool(tmp_path / "spool")
    ingestor = Ingestor(breaker_settings, spool, db)
    for n in range(6):
        ingestor.accept_file(make_file(ingestor.staging_dir, study_uid="1.2.3.4", fill=n), SOURCE)
    peer = Peer()
    stop = threading.Event()
    worker = DeliveryWorker(
        destination=breaker_settings.destinations["pacs"],
        sender=peer,
        db=db,
        spool=spool,
        delivery=breaker_settings.delivery,
        owner="test/pacs/0",
        stop=stop,
        health=Breaker(db=db, destination="pacs", policy=breaker_settings.health.policy("pacs")),
    )
    worker.start()
    try:
        wait_for(lambda: len(peer.batches) >= 5, "probes after the breaker opened")
        row = health_row(db, "pacs")
        assert row is not None and row["state"] == "down"
        assert row["last_error"] == "connect failed - connection refused"
        sizes = [size for _reachable, size in peer.batches]
        assert sizes[0] == 6, "a whole batch while up (later ones: what backoff made due)"
        assert set(sizes[3:]) == {1}, "then probes of one instance"
        peer.reachable = True
        wait_for(lambda: (health_row(db, "pacs") or {}).get("state") == "up", "a probe closes it")
        wait_for(lambda: sum(s for ok, s in peer.batches if ok) == 6, "the backlog is sent")
    finally:
        stop.set()
        worker.join(5)
    kinds = [e["kind"] for e in events_for(db, actor="pacs")]
    assert [k for k in kinds if k.startswith("destination.")] == [
        "destination.down",
        "destination.up",
    ]
    sent = [(ok, size) for ok, size in peer.batches if ok]
    assert sent[0] == (True, 1) and sent[1] == (True, 5), "the probe, then the backlog at once"


@dataclass
class EchoingPeer(Peer):
    """A Peer whose sender also has an idle probe; counts the probes."""

    probes: int = 0

    def probe(self) -> ProbeResult:
        self.probes += 1
        if self.reachable:
            return ProbeResult("up", "C-ECHO", "0x0000")
        return ProbeResult("down", "C-ECHO", "connect failed", "connection refused")


def test_a_worker_with_nothing_queued_probes_idle_until_the_peer_is_back(
    breaker_settings: Settings, db: Database, tmp_path: Path
) -> None:
    with db.transaction() as cur:  # down, with nothing queued (failover emptied it)
        cur.execute(
            "INSERT INTO destination_health (destination, state, since, consecutive_failures, "
            "next_probe_at, updated_at) VALUES ('pacs', 'down', ?, 3, NULL, ?)",
            (time.time(), time.time()),
        )
    peer = EchoingPeer()
    stop = threading.Event()
    worker = DeliveryWorker(
        destination=breaker_settings.destinations["pacs"],
        sender=peer,
        db=db,
        spool=FilesystemSpool(tmp_path / "spool"),
        delivery=breaker_settings.delivery,
        owner="test/pacs/0",
        stop=stop,
        health=Breaker(db=db, destination="pacs", policy=breaker_settings.health.policy("pacs")),
    )
    worker.start()
    try:
        wait_for(lambda: peer.probes >= 2, "idle probes while the peer is away")
        row = health_row(db, "pacs")
        assert row is not None and row["state"] == "down"
        assert row["last_error"] == "connect failed - connection refused (idle probe, C-ECHO)"
        peer.reachable = True
        wait_for(lambda: (health_row(db, "pacs") or {}).get("state") == "up", "echoed back up")
        probes = peer.probes
        time.sleep(0.5)  # over two probe intervals
        assert peer.probes == probes, "up: no more probes"
    finally:
        stop.set()
        worker.join(5)
    assert peer.batches == [], "no instance was sent"
    ups = [e for e in events_for(db, actor="pacs") if e["kind"] == "destination.up"]
    assert len(ups) == 1


# -- gauges and alert rules --------------------------------------------------------------------


def test_gauges_show_each_destination_and_the_alert_rules_use_real_names(
    breaker_settings: Settings, db: Database, tmp_path: Path
) -> None:
    telemetry = Telemetry.from_environment(
        service_version="test", instance_id="unit", environ={"OTEL_TRACES_EXPORTER": "none"}
    )
    try:
        telemetry.metrics.observe(db, FilesystemSpool(tmp_path / "spool"), ["backup", "pacs"])
        with db.transaction() as cur:
            cur.execute(
                "INSERT INTO destination_health (destination, state, since, "
                "consecutive_failures, updated_at) VALUES ('pacs', 'down', 1, 7, 1)"
            )
        text = telemetry.metrics.prometheus_text().decode()
    finally:
        telemetry.shutdown()
    assert 'gateway_destination_up{destination="pacs"} 0.0' in text
    assert 'gateway_destination_up{destination="backup"} 1.0' in text
    assert 'gateway_destination_consecutive_failures{destination="pacs"} 7.0' in text
    exposed = set(re.findall(r"^(gateway_[a-z_]+?)(?:_bucket|_count|_sum)?[{ ]", text, re.M))
    rules = yaml.safe_load((ROOT / "infra" / "prometheus" / "alerts.yaml").read_text())
    names = {
        name
        for group in rules["groups"]
        for rule in group["rules"]
        for name in re.findall(r"gateway_[a-z_]+", rule["expr"])
    }
    used = {name.removesuffix("_bucket") for name in names}
    # Counters and histograms appear once something was counted; gauges always do.
    gauges = {name for name in names if not name.endswith(("_total", "_bucket"))}
    missing = {name for name in gauges if name not in exposed}
    assert {"gateway_destination_up", "gateway_queue_depth"} <= used
    assert not missing, f"alert rules use metrics /metrics does not have: {missing}"
    observability = (ROOT / "docs" / "observability.md").read_text()
    assert all(f"`{name}`" in observability for name in used), "document every alerted metric"
