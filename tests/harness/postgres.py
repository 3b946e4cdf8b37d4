"""A throwaway PostgreSQL cluster for the PostgreSQL backend's contract and end-to-end tests.

Debian's server binaries live in ``/usr/lib/postgresql/<version>/bin`` (not on PATH). The
cluster is created with ``initdb`` in a fresh temporary folder and started with ``pg_ctl`` on a
free 127.0.0.1 port, its unix socket inside that folder (never ``/var/run/postgresql``). Both
programs refuse to run as root, so as root they run as the ``postgres`` user (``runuser``) and
the folder is handed to that user. Durability is switched off (``fsync=off``): the tests prove
locking and atomicity, not the disk. Password authentication (scram) is on for TCP, so the
gateway's URL carries a password like a real deployment's.

Stopping: ``pg_ctl stop -m fast``; if that fails, the postmaster's pid (from its pid file, a
process this module started) is killed. Every test gets its own database
(:meth:`PostgresServer.create_database`), so tests never see each other's rows.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self

from .process import LOOPBACK, free_port

__all__ = ["PostgresServer", "postgres_bindir"]

SUPERUSER = "postgres"
PASSWORD = "gateway-test-password"


def postgres_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (newest Debian version first), or None."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.parent.name)] or [0],
        reverse=True,
    )
    if candidates:
        return candidates[0].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer:
    """One started cluster; :meth:`url` names a database on it for the gateway."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = Path(bindir)
        self.port = 0
        self.root: Path | None = None
        self._pid: int | None = None
        self._as_postgres = os.geteuid() == 0

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    def _run(self, *argv: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        command = list(argv)
        if self._as_postgres:
            command = ["runuser", "-u", SUPERUSER, "--", *command]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False, cwd="/"
        )

    def start(self) -> Self:
        # Always under /tmp, never under tempfile's current folder: an in-process gateway
        # points that at its spool, which the postgres user cannot read.
        self.root = Path(tempfile.mkdtemp(prefix="gw-postgres-", dir="/tmp"))
        if self._as_postgres:
            shutil.chown(self.root, user=SUPERUSER, group=SUPERUSER)
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self._as_postgres:
            shutil.chown(pwfile, user=SUPERUSER, group=SUPERUSER)
        init = self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stdout}\n{init.stderr}")
        self.port = free_port()
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {self.root}",
                f"-c listen_addresses={LOOPBACK}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=300",
            ]
        )
        started = self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.root / "postgres.log"),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )
        if started.returncode != 0:
            raise RuntimeError(
                f"pg_ctl start failed: {started.stdout}\n{started.stderr}\n{self.log_tail()}"
            )
        self._pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        atexit.register(self.stop)
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{PASSWORD}@{LOOPBACK}:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (unique name by default) and return its URL."""
        import psycopg

        name = name or f"gw_{uuid.uuid4().hex[:16]}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name {name!r}")
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.root is None:
            return
        if self._pid is not None:
            result = self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"
            )
            if result.returncode != 0 and _running(self._pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while _running(self._pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
            self._pid = None
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
        atexit.unregister(self.stop)

    def log_tail(self, lines: int = 30) -> str:
        if self.root is None:
            return ""
        with contextlib.suppress(OSError):
            text = (self.root / "postgres.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
