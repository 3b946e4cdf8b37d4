"""Scale-out end to end: gateways on S3 (SeaweedFS) and PostgreSQL, alone and as replicas.

* The bridge tests of ``test_bridge.py`` run unchanged with the spool and database swapped for
  S3 and PostgreSQL (their ``write_config`` is wrapped; their bodies are not touched).
* Two replicas (two ``dicom-gateway serve`` processes, same bucket, same database), one DCMTK
  storescu each, one shared storescp: every instance arrives exactly once.
* One replica is SIGKILLed while it holds leases; the other takes them over when they expire and
  finishes the work.
* S3 goes away for a moment: C-STORE answers 0xA700, nothing unstored is acknowledged or
  recorded, and storing works again as soon as S3 is back.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.db import Database, open_database
from tests.e2e import test_bridge as bridge
from tests.e2e.scu import header_ids, send_files
from tests.harness import (
    LOOPBACK,
    GatewayProcess,
    OrthancServer,
    StoreSCP,
    free_port,
    make_ct_series,
    require_binary,
    storescu,
    wait_until,
    write_config,
)
from tests.harness.postgres import PostgresServer
from tests.harness.seaweedfs import SeaweedFS, weed_binary

pytestmark = [pytest.mark.dcmtk, pytest.mark.s3, pytest.mark.postgres]

FAST_RETRY = {"max_attempts": 50, "initial_backoff": 0.2, "max_backoff": 1.0}
STATUS_OUT_OF_RESOURCES = 0xA700


@pytest.fixture
def aws_env(seaweedfs_server: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The standard AWS variables, set for this process and every gateway it starts."""
    env = seaweedfs_server.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def scaleout_storage(
    seaweedfs_server: SeaweedFS, s3_bucket: str, postgres_server: PostgresServer
) -> tuple[str, str]:
    """(spool URL, database URL) on the session's SeaweedFS and PostgreSQL, fresh per test."""
    return f"s3://{s3_bucket}/spool", postgres_server.create_database()


# -- the bridge, unchanged, on S3 + PostgreSQL ---------------------------------------------


@pytest.fixture
def bridge_on_scaleout(
    scaleout_storage: tuple[str, str], aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Make test_bridge's gateways use S3 and PostgreSQL instead of a folder and SQLite."""
    spool_url, database_url = scaleout_storage
    original = getattr(bridge, "write_config", None)
    assert original is not None, "test_bridge no longer builds its config with write_config"

    def swapped(path: Path, **kwargs: Any) -> Path:
        kwargs["spool"] = spool_url
        kwargs["database"] = database_url
        # Without a port the HTTP side binds 0.0.0.0:8080, which parallel runs fight over.
        kwargs.setdefault("http_port", free_port())
        return original(path, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(bridge, "write_config", swapped)


@pytest.mark.orthanc
@pytest.mark.usefixtures("bridge_on_scaleout")
def test_bridge_series_and_large_multiframe_on_s3_and_postgresql(
    tmp_path: Path, orthanc: OrthancServer, storescp: StoreSCP
) -> None:
    bridge.test_series_and_large_multiframe_reach_stowrs_and_cstore(tmp_path, orthanc, storescp)


@pytest.mark.slow
@pytest.mark.usefixtures("bridge_on_scaleout")
def test_bridge_sigkill_loses_nothing_on_s3_and_postgresql(
    tmp_path: Path, storescp: StoreSCP
) -> None:
    bridge.test_sigkill_while_receiving_and_forwarding_loses_nothing_acknowledged(
        tmp_path, storescp
    )


# -- replicas ------------------------------------------------------------------------------


class ThrottledProxy:
    """A TCP relay to `upstream` that passes at most `rate` bytes/s per connection each way.

    It stands for a slow WAN link to the PACS, so deliveries stay in flight long enough for a
    test to kill a replica while it holds leases.
    """

    def __init__(self, upstream: int, rate: int) -> None:
        self.upstream = upstream
        self.rate = rate
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection((LOOPBACK, self.upstream))
            except OSError:
                client.close()
                continue
            self._sockets += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        chunk = max(1024, self.rate // 20)
        with contextlib.suppress(OSError):
            while data := source.recv(chunk):
                target.sendall(data)
                time.sleep(len(data) / self.rate)
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def forking_storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    """storescp serving associations in parallel, so two replicas can deliver at once."""
    require_binary("storescp")
    scp = StoreSCP(tmp_path / "storescp" / "received", extra_args=["--fork"])
    scp.start()
    try:
        yield scp
    finally:
        scp.stop()


def store_requests(scp: StoreSCP) -> int:
    """C-STORE requests storescp received (its log; a repeated instance overwrites its file)."""
    return scp.log_text().count("Received Store Request")


def replica_configs(
    tmp_path: Path,
    storage: tuple[str, str],
    destination_port: int,
    *,
    count: int = 2,
    max_batch: int = 5,
) -> list[Path]:
    spool_url, database_url = storage
    configs = []
    for index in range(count):
        configs.append(
            write_config(
                tmp_path / f"replica-{index}" / "gateway.yaml",
                dimse_port=free_port(),
                http_port=free_port(),
                spool=spool_url,
                database=database_url,
                destinations={
                    "pacs": {
                        "type": "dimse",
                        "ae_title": "STORESCP",
                        "host": LOOPBACK,
                        "port": destination_port,
                        "workers": 2,
                        "max_batch_instances": max_batch,
                        "retry": FAST_RETRY,
                    }
                },
                routes=[{"name": "to-pacs", "forward": ["pacs"]}],
                extra={"delivery": {"lease_seconds": 5, "poll_interval": 0.1}},
            )
        )
    return configs


def start_replicas(configs: list[Path], env: dict[str, str]) -> list[GatewayProcess]:
    replicas = []
    for config in configs:
        replicas.append(GatewayProcess(config, config.parent, env=env).start())
    return replicas


def rows(db: Database, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with db.transaction(write=False) as cur:
        return cur.execute(sql, params).fetchall()


def owner_prefix(gateway: GatewayProcess) -> str:
    """Lease owners of a replica are `<host>-<pid>/<destination>/<worker>`."""
    return f"{socket.gethostname()}-{gateway.pid}/"


def test_two_replicas_deliver_every_instance_exactly_once(
    tmp_path: Path,
    scaleout_storage: tuple[str, str],
    aws_env: dict[str, str],
    forking_storescp: StoreSCP,
) -> None:
    require_binary("storescu")
    configs = replica_configs(tmp_path, scaleout_storage, forking_storescp.port)
    series = [
        make_ct_series(tmp_path / f"series-{n}", 25, rows=64, cols=64, seed=n) for n in range(2)
    ]
    expected = {header_ids(path)[1] for files in series for path in files}
    replicas = start_replicas(configs, aws_env)
    db = open_database(scaleout_storage[1])
    try:
        results: list[Any] = [None, None]

        def send(index: int) -> None:
            results[index] = storescu(
                series[index], replicas[index].dimse_port, called_aet=replicas[index].ae_title
            )

        senders = [threading.Thread(target=send, args=(n,)) for n in range(2)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        for result in results:
            assert result.returncode == 0, result.stderr
        wait_until(
            lambda: expected <= forking_storescp.received_sop_instance_uids(),
            timeout=120,
            message="all 50 instances at storescp",
        )
        wait_until(
            lambda: (
                rows(db, "SELECT COUNT(*) AS n FROM deliveries WHERE state = 'delivered'")[0]["n"]
                == 50
            ),
            timeout=30,
            message="all deliveries settled",
        )
        # 50 distinct instances arrived in 50 requests: none arrived twice.
        assert forking_storescp.received_sop_instance_uids() == expected
        assert store_requests(forking_storescp) == 50
        attempts = rows(db, "SELECT delivery_id, worker FROM delivery_attempts")
        assert len(attempts) == 50 and len({a["delivery_id"] for a in attempts}) == 50
        by_replica = Counter(
            next(n for n, gw in enumerate(replicas) if a["worker"].startswith(owner_prefix(gw)))
            for a in attempts
        )
        print(f"deliveries sent per replica: {dict(by_replica)}")
    finally:
        db.close()
        for replica in replicas:
            replica.stop()


def test_killed_replica_leases_are_finished_by_the_other(
    tmp_path: Path,
    scaleout_storage: tuple[str, str],
    aws_env: dict[str, str],
    forking_storescp: StoreSCP,
) -> None:
    require_binary("storescu")
    proxy = ThrottledProxy(forking_storescp.port, rate=150_000)
    configs = replica_configs(tmp_path, scaleout_storage, proxy.port, max_batch=4)
    files = make_ct_series(tmp_path / "series", 40, rows=128, cols=128)
    expected = {header_ids(path)[1] for path in files}
    replicas = start_replicas(configs, aws_env)
    victim, survivor = replicas
    db = open_database(scaleout_storage[1])
    try:
        sent = storescu(files, victim.dimse_port, called_aet=victim.ae_title)
        assert sent.returncode == 0, sent.stderr  # all 40 acknowledged by the victim

        def victim_leases() -> list[dict[str, Any]]:
            return rows(
                db,
                "SELECT id FROM deliveries WHERE state = 'leased' AND lease_owner LIKE ?",
                (owner_prefix(victim) + "%",),
            )

        wait_until(victim_leases, timeout=30, message="the victim holding leases")
        victim.kill()
        killed_at = time.monotonic()
        # Read after the kill: these leases can no longer be settled by their owner.
        held = {row["id"] for row in victim_leases()}
        assert held, "the victim died holding leases"
        wait_until(
            lambda: expected <= forking_storescp.received_sop_instance_uids(),
            timeout=120,
            message="every instance at storescp after the kill",
        )
        wait_until(
            lambda: (
                rows(db, "SELECT COUNT(*) AS n FROM deliveries WHERE state = 'delivered'")[0]["n"]
                == 40
            ),
            timeout=60,
            message="every delivery settled by the survivor",
        )
        print(
            f"victim held {len(held)} lease(s); all delivered "
            f"{time.monotonic() - killed_at:.1f}s after the kill"
        )
        marks = ", ".join("?" for _ in held)
        taken_over = rows(
            db,
            "SELECT delivery_id, worker, outcome FROM delivery_attempts "
            f"WHERE delivery_id IN ({marks})",
            tuple(held),
        )
        assert {a["delivery_id"] for a in taken_over} == held
        assert all(a["worker"].startswith(owner_prefix(survivor)) for a in taken_over)
        assert all(a["outcome"] == "delivered" for a in taken_over)
        extra = store_requests(forking_storescp) - len(expected)
        assert 0 <= extra <= len(held), "only the killed replica's in-flight sends may repeat"
    finally:
        db.close()
        for replica in replicas:
            replica.stop()
        proxy.close()


# -- S3 outage -----------------------------------------------------------------------------


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


def test_s3_outage_refuses_then_recovers(
    tmp_path: Path,
    own_seaweedfs: SeaweedFS,
    postgres_server: PostgresServer,
    storescp: StoreSCP,
) -> None:
    bucket = own_seaweedfs.create_bucket("outage-test")
    database_url = postgres_server.create_database()
    config = write_config(
        tmp_path / "gateway.yaml",
        dimse_port=free_port(),
        http_port=free_port(),
        spool=f"s3://{bucket}/spool",
        database=database_url,
        destinations={
            "pacs": {
                "type": "dimse",
                "ae_title": storescp.aet,
                "host": LOOPBACK,
                "port": storescp.port,
                "retry": FAST_RETRY,
            }
        },
        routes=[{"name": "to-pacs", "forward": ["pacs"]}],
        extra={"delivery": {"lease_seconds": 5, "poll_interval": 0.1}},
    )
    before, during = (
        make_ct_series(tmp_path / name, 3, rows=64, cols=64, seed=n)
        for n, name in enumerate(("before", "during"))
    )
    db = open_database(database_url)

    def sops(files: list[Path]) -> set[str]:
        return {header_ids(path)[1] for path in files}

    with GatewayProcess(config, tmp_path, env=own_seaweedfs.env()) as gateway:
        try:
            assert set(send_files(before, gateway.dimse_port).values()) == {0}
            own_seaweedfs.stop()
            statuses = send_files(during, gateway.dimse_port, timeout=60)
            assert set(statuses.values()) == {STATUS_OUT_OF_RESOURCES}, statuses
            recorded = {
                row["sop_instance_uid"]
                for row in rows(db, "SELECT sop_instance_uid FROM instances")
            }
            assert recorded == sops(before), "nothing refused may be recorded"
            assert gateway.alive
            own_seaweedfs.start()
            wait_until(
                lambda: set(send_files(during, gateway.dimse_port).values()) == {0},
                timeout=60,
                interval=1.0,
                message="C-STORE succeeding again after S3 came back",
            )
            wait_until(
                lambda: sops(before) | sops(during) <= storescp.received_sop_instance_uids(),
                timeout=60,
                message="everything acknowledged delivered",
            )
            client = own_seaweedfs.client()
            for row in rows(db, "SELECT spool_key FROM instances"):
                client.head_object(Bucket=bucket, Key=f"spool/{row['spool_key']}")
        finally:
            db.close()
    assert "unreachable" in gateway.log_text(), "the log says why C-STORE was refused"
