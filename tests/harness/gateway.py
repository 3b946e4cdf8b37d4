"""The gateway under test, run as a real subprocess exactly as an operator would run it.

End-to-end tests must see what production sees: the CLI entry point, the YAML config, real
sockets, real signals. So the gateway runs as ``python -m gateway serve --config FILE`` in its own
process (and process group), is declared ready only when it answers a DICOM C-ECHO (and
``GET /healthz`` when HTTP is configured), and can be stopped gracefully (SIGTERM), killed
mid-flight (SIGKILL, to prove "durable before acknowledged") and restarted on the same config.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import httpx
import yaml

from .process import LOOPBACK, ManagedProcess, PeerProcess, ProcessDiedError

__all__ = ["REPO_ROOT", "GatewayProcess", "write_config"]

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout holding the ``gateway`` package; put on PYTHONPATH so ``-m gateway`` imports it
from any working directory, installed or not."""

_PROBE_AET = "HARNESS"
_VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"


def write_config(
    path: Path,
    *,
    dimse_port: int,
    http_port: int | None = None,
    spool: Path | str,
    database: Path | str,
    destinations: Mapping[str, Mapping[str, Any]],
    routes: Sequence[Mapping[str, Any]],
    extra: Mapping[str, Any] | None = None,
    ae_title: str = "GATEWAY",
) -> Path:
    """Write a gateway YAML config bound to 127.0.0.1 and return ``path``.

    ``spool`` and ``database`` may be paths (turned into ``file:///abs`` and
    ``sqlite:////abs``) or ready URLs (anything containing ``://``). ``extra`` is merged on top,
    one level deep for mappings, so ``{"dimse": {"allowed_callers": [...]}}`` keeps
    ``max_associations``. The shape is the user-facing one in docs/ARCHITECTURE::

        node: {ae_title: GATEWAY, dimse: {host: 127.0.0.1, port: P}, http: {host: ..., port: H}}
        storage: {spool: "file:///abs/spool", database: "sqlite:////abs/gateway.db"}
        dimse: {max_associations: 16}
        destinations: {...}
        routes: [...]
    """
    node: dict[str, Any] = {"ae_title": ae_title, "dimse": {"host": LOOPBACK, "port": dimse_port}}
    # No HTTP port asked for: switch the HTTP side off rather than let it take the default
    # 0.0.0.0:8080 (not loopback-only, and parallel tests would collide on it).
    node["http"] = {"host": LOOPBACK, "port": http_port} if http_port is not None else None
    config: dict[str, Any] = {
        "node": node,
        "storage": {
            "spool": _url(spool, "file://"),
            "database": _url(database, "sqlite:///"),
        },
        "dimse": {"max_associations": 16},
        "destinations": {name: dict(dest) for name, dest in destinations.items()},
        "routes": [dict(route) for route in routes],
    }
    for key, value in (extra or {}).items():
        if isinstance(value, Mapping) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _url(value: Path | str, scheme: str) -> str:
    text = str(value)
    if "://" in text:
        return text
    # Path("/abs").resolve() -> "/abs"; scheme "sqlite:///" + "/abs" -> "sqlite:////abs".
    return scheme + str(Path(text).resolve())


class GatewayProcess(PeerProcess):
    """``python -m gateway serve --config CONFIG`` started in ``workdir``.

    The DIMSE port, AE title and HTTP port are read from the config (``node.*``) when the object
    is made and again at every :meth:`start`; a host of ``0.0.0.0`` is probed on 127.0.0.1.
    The readiness C-ECHO calls with the first configured ``dimse.allowed_callers`` AE title
    (else ``HARNESS``) so an allow-list does not block it; an association rejection also counts
    as "up", since only a live DICOM server can reject. That probe is one extra association
    (and maybe an audit event) per start.
    """

    _label = "gateway"

    def __init__(
        self,
        config_path: Path,
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config_path = Path(config_path).resolve()
        self.workdir = Path(workdir)
        self.env = dict(env or {})
        self._process: ManagedProcess | None = None
        self._load_config()

    def _load_config(self) -> None:
        # Re-read on every start: a test may rewrite the config between restarts.
        config = yaml.safe_load(self.config_path.read_text()) or {}
        node = config.get("node") or {}
        dimse = node.get("dimse") or {}
        http = node.get("http") or {}
        self.ae_title: str = str(node.get("ae_title", "GATEWAY"))
        self.dimse_host: str = _probe_host(dimse.get("host"))
        self.dimse_port: int = int(dimse["port"])
        self.http_host: str = _probe_host(http.get("host"))
        self.http_port: int | None = int(http["port"]) if http.get("port") else None
        callers = (config.get("dimse") or {}).get("allowed_callers") or []
        self.probe_aet: str = str(callers[0]["ae_title"]) if callers else _PROBE_AET

    @property
    def http_url(self) -> str:
        """Base URL of the gateway's HTTP side (DICOMweb, admin), no trailing slash."""
        if self.http_port is None:
            raise RuntimeError("the config has no node.http port")
        return f"http://{self.http_host}:{self.http_port}"

    def _environment(self) -> dict[str, str]:
        pythonpath = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        # Unbuffered output: a killed gateway's last log lines are exactly what a test needs.
        return {"PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1", **self.env}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        """Start the gateway and wait until it answers C-ECHO (and /healthz if configured)."""
        if self.alive:
            raise RuntimeError("gateway already running")
        self._load_config()
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path)]
        self._process = ManagedProcess(
            argv, workdir=self.workdir, name="gateway", env=self._environment()
        ).start()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self._process.kill()
            raise
        return self

    def run_cli(
        self, *args: str, timeout: float = 60.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python -m gateway *args`` in ``workdir`` and capture text output.

        Nothing is added to ``args``: pass ``"--config", str(gw.config_path)`` where the
        command needs it. Never raises on a non-zero exit; assert on ``returncode``.
        """
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            cwd=self.workdir,
            env={**os.environ, **self._environment()},
            capture_output=True,
            text=True,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )

    # -- readiness ---------------------------------------------------------------------------

    def echo(self, timeout: float = 5.0) -> int | None:
        """One C-ECHO from ``probe_aet``; the status, or ``None`` with no association.

        Returns ``-1`` if the association was rejected (the server is up but said no).
        """
        from pynetdicom import AE

        ae = AE(ae_title=self.probe_aet)
        ae.add_requested_context(_VERIFICATION_SOP_CLASS)
        ae.acse_timeout = timeout
        ae.dimse_timeout = timeout
        ae.network_timeout = timeout
        assoc = ae.associate(self.dimse_host, self.dimse_port, ae_title=self.ae_title)
        try:
            if assoc.is_rejected:
                return -1
            if not assoc.is_established:
                return None
            status = assoc.send_c_echo()
            return int(status.Status) if status else None
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()

    def _wait_ready(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        dimse_ready = False
        http_ready = self.http_port is None
        last_error = ""
        while True:
            if not self._process.alive:
                raise ProcessDiedError(
                    f"gateway exited with {self._process.returncode} during start; log tail:\n"
                    f"{self._process.log_tail()}"
                )
            if not dimse_ready:
                # A plain TCP connect first: pynetdicom logs an error for every refused
                # association attempt, which would bury the gateway's own start-up messages.
                if _port_open(self.dimse_host, self.dimse_port):
                    dimse_ready = self.echo(timeout=2.0) is not None
                last_error = f"C-ECHO to {self.dimse_host}:{self.dimse_port}: no association"
            if dimse_ready and not http_ready:
                try:
                    response = httpx.get(f"{self.http_url}/healthz", timeout=2.0)
                    http_ready = response.status_code == 200
                    last_error = f"GET /healthz answered {response.status_code}"
                except httpx.TransportError as exc:
                    last_error = f"GET /healthz: {exc!r}"
            if dimse_ready and http_ready:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"gateway not ready within {timeout:.1f}s ({last_error}); log tail:\n"
                    f"{self._process.log_tail()}"
                )
            time.sleep(0.1)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _probe_host(host: object) -> str:
    text = str(host) if host else LOOPBACK
    return LOOPBACK if text in ("0.0.0.0", "::", "") else text
