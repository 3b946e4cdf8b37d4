"""The servers under comparison, each started fresh on 127.0.0.1 by the test harness.

* ``gateway``: ``python -m gateway serve`` (:class:`tests.harness.GatewayProcess`), SQLite and a
  filesystem spool in its own folder, HTTP on, a bearer token from ``python -m gateway token``.
* ``gateway`` runs its defaults otherwise: log level info, no telemetry exporter, 256 KB
  maximum PDU, routing default ``hold`` (no destinations except in the bridge scenario).
* ``orthanc``: Orthanc + DICOMweb plugin (:class:`tests.harness.OrthancServer`) with the
  harness's config: ``SyncStorageArea`` at its default (true: files are fsynced), no storage
  compression, ``TCP_NODELAY=1``; otherwise Orthanc's defaults (SQLite index, 16 KB maximum
  PDU, ``StorageAccessOnFind: Always``).
* ``storescp``: DCMTK ``storescp --bit-preserving`` (:class:`tests.harness.StoreSCP`), the
  floor: it writes each object to a file and does nothing else (no fsync, no index).

What an acknowledgement costs differs, and the ratios include it. The gateway answers a
C-STORE (or a STOW-RS request) after the object file is fsynced, renamed into the spool, its
folder fsynced and the SQLite commit (``synchronous=FULL``: the WAL fsynced) is done: three
flushes per object, so nothing it acknowledged is lost in a power cut. Orthanc 1.10 (strace of
its C-STORE, 50 instances) does one ``fdatasync`` of each stored file, syncs no folder, and
synced its SQLite index's WAL twice in all (``synchronous=NORMAL`` behaviour: the WAL is
flushed at checkpoints, not per commit): after a power cut the last instances it acknowledged
can be missing from its index or its folders. ``bench.whatif``
prices the difference (variant ``nodirsync+sqlite-normal``, the gateway at Orthanc's level).

Every system exposes what scenarios need through :class:`Running`: its pid (for peak RSS), its
DIMSE address and its DICOMweb root. Only processes started here are ever signalled, by pid.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness import GatewayProcess, OrthancServer, StoreSCP, free_port, write_config

__all__ = [
    "EndpointUnavailable",
    "Running",
    "gateway_config",
    "running_gateway",
    "running_orthanc",
    "running_storescp",
    "seed_gateway_in_process",
]

GATEWAY_AET = "GATEWAY"
ORTHANC_AET = "ORTHANC"
STORESCP_AET = "STORESCP"
SCOPES = "dicomweb.read dicomweb.write"


class EndpointUnavailable(Exception):
    """A system does not (yet) offer what a scenario needs; the scenario is skipped for it."""


@dataclass
class Running:
    """A started system as scenarios see it."""

    name: str
    pid: int
    aet: str
    dimse_port: int
    dicomweb: str | None  # DICOMweb root (".../studies" hangs below), no trailing slash
    headers: dict[str, str] = field(default_factory=dict)
    count_instances: Any = None  # () -> int, how many instances the system holds
    db_path: Path | None = None  # the gateway's SQLite file
    unavailable: str | None = None  # why DICOMweb cannot be used, if it cannot
    harness: Any = None  # the harness object (OrthancServer: REST upload, reset)


# -- gateway -------------------------------------------------------------------------------


def gateway_config(
    workdir: Path,
    *,
    destinations: Mapping[str, Mapping[str, Any]] | None = None,
    routes: Sequence[Mapping[str, Any]] = (),
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a gateway config in ``workdir`` (spool, SQLite, HTTP on free loopback ports)."""
    return write_config(
        workdir / "gateway.yaml",
        dimse_port=free_port(),
        http_port=free_port(),
        spool=workdir / "spool",
        database=workdir / "gateway.db",
        destinations=destinations or {},
        routes=routes,
        extra=extra,
        ae_title=GATEWAY_AET,
    )


@contextlib.contextmanager
def running_gateway(config: Path, *, env: Mapping[str, str] | None = None) -> Iterator[Running]:
    """Start ``python -m gateway serve --config CONFIG``; stop it (SIGTERM, by pid) after."""
    workdir = config.parent
    process = GatewayProcess(config, workdir, env=env)
    process.start(timeout=60)
    try:
        token = process.run_cli("token", "--config", str(config), "--scope", SCOPES)
        unavailable = None
        headers: dict[str, str] = {}
        if token.returncode == 0 and token.stdout.strip():
            headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
        else:
            unavailable = f"`gateway token` failed ({token.returncode}): {token.stderr[-300:]}"
        db_path = workdir / "gateway.db"
        yield Running(
            name="gateway",
            pid=process.pid,
            aet=GATEWAY_AET,
            dimse_port=process.dimse_port,
            dicomweb=process.http_url,
            headers=headers,
            count_instances=lambda: _sqlite_count(db_path),
            db_path=db_path,
            unavailable=unavailable,
        )
    finally:
        process.stop(timeout=30)


def _sqlite_count(db_path: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM instances").fetchone()[0])


def seed_gateway_in_process(config: Path, files: Iterable[Path], *, progress: Any = None) -> int:
    """Index ``files`` through the gateway's real ingest use case, in this process.

    The fast way to give the gateway 100 k instances: no network, but the same header parse,
    routing, spool ``put`` (fsync + rename) and SQLite outbox transaction as a C-STORE. Each
    file is copied into the spool's staging folder first because ingest consumes its input.
    Run it before the gateway process starts (SQLite then has a single writer).
    """
    from gateway.config import load_settings
    from gateway.db import open_database
    from gateway.ingest import Ingestor, Source
    from gateway.spool import open_spool

    settings = load_settings(config)
    spool = open_spool(settings.storage.spool)
    db = open_database(settings.storage.database)
    ingestor = Ingestor(settings, spool, db)
    source = Source(door="dimse", calling_ae="BENCHSEED", called_ae=GATEWAY_AET, peer="127.0.0.1")
    count = 0
    try:
        for path in files:
            staged = ingestor.staging_dir / f"seed-{uuid.uuid4().hex}.dcm"
            shutil.copyfile(path, staged)
            ingestor.accept_file(staged, source)
            count += 1
            if progress is not None and count % 5000 == 0:
                progress(count)
    finally:
        db.close()
    return count


# -- Orthanc and storescp ------------------------------------------------------------------


@contextlib.contextmanager
def running_orthanc(workdir: Path) -> Iterator[Running]:
    """Start Orthanc with DICOMweb; SIGKILL it after (its storage is thrown away anyway)."""
    server = OrthancServer(workdir, aet=ORTHANC_AET)
    server.start(timeout=60)
    try:
        yield Running(
            name="orthanc",
            pid=server.pid,
            aet=ORTHANC_AET,
            dimse_port=server.dicom_port,
            dicomweb=server.dicomweb_url,
            count_instances=server.instance_count,
            harness=server,
        )
    finally:
        server.kill()


@contextlib.contextmanager
def running_storescp(workdir: Path) -> Iterator[Running]:
    """Start ``storescp --bit-preserving`` writing into ``workdir/received``."""
    server = StoreSCP(workdir / "received", aet=STORESCP_AET, logdir=workdir)
    server.start()
    try:
        yield Running(
            name="storescp",
            pid=server.pid,
            aet=STORESCP_AET,
            dimse_port=server.port,
            dicomweb=None,
            count_instances=lambda: len(server.received_files()),
        )
    finally:
        server.stop()
