"""A real Orthanc (with the DICOMweb plugin) as the cloud archive or PACS in end-to-end tests.

Orthanc stands in for both kinds of destination the gateway forwards to: its DICOMweb plugin
answers STOW-RS/QIDO-RS/WADO-RS at :attr:`OrthancServer.dicomweb_url`, and its DICOM server takes
C-STORE (and answers C-FIND/C-MOVE/C-GET) at :attr:`OrthancServer.dicom_port`. Tests check what
arrived through Orthanc's own REST API, which sees the stored files independent of the protocol
they came in by.

Facts about Orthanc 1.10.1 / DICOMweb plugin 1.7 that shaped this module:

* It binds **every** interface (there is no bind-address option in 1.10), so the config sets
  ``RemoteAccessAllowed: false`` and the harness only ever talks to 127.0.0.1.
* It is ready within ~0.1 s; readiness is ``GET /system`` answering plus the DICOM port open.
* A graceful stop (SIGTERM) takes 3-5 s (HTTP server ~2 s, DICOM server ~1 s, then teardown).
  :meth:`OrthancServer.kill` is instant and is what the fixture uses, since its storage is a
  temporary directory; SQLite recovers the index if a test restarts after a kill.
* ``OverwriteInstances`` defaults to false: a second copy of the same SOP instance is accepted
  on the wire but Orthanc keeps the first (pass ``config_overrides`` to change it).
* ``StorageCompression`` is off, so :meth:`OrthancServer.instance_file` returns the Part 10 file
  exactly as Orthanc stored it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import httpx

from .process import (
    LOOPBACK,
    ManagedProcess,
    PeerProcess,
    ProcessDiedError,
    free_port,
    wait_for_port,
)

__all__ = ["ORTHANC_BINARY", "ORTHANC_DICOMWEB_PLUGIN", "OrthancServer"]

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class OrthancServer(PeerProcess):
    """One Orthanc process with its own config, storage and free ports under ``workdir``.

    ``modalities`` maps a symbolic name to ``(ae_title, host, port)`` and becomes Orthanc's
    ``DicomModalities`` (needed for C-MOVE destinations and for Orthanc to C-STORE anywhere).
    ``config_overrides`` is merged last into the generated JSON config, for the odd test that
    needs e.g. ``{"OverwriteInstances": True}``.

    Ports are picked on the first :meth:`start` and kept for the life of the object, so
    :meth:`restart` comes back on the same ports with the same storage.
    """

    _label = "OrthancServer"

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "ORTHANC",
        modalities: dict[str, tuple[str, str, int]] | None = None,
        config_overrides: Mapping[str, Any] | None = None,
        verbose: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.modalities = dict(modalities or {})
        self.config_overrides = dict(config_overrides or {})
        self.verbose = verbose
        self.storage_dir = self.workdir / "storage"
        self.config_path = self.workdir / "orthanc.json"
        self._http_port: int | None = None
        self._dicom_port: int | None = None
        self._process: ManagedProcess | None = None
        self._client: httpx.Client | None = None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def http_port(self) -> int:
        """Orthanc's HTTP (REST and DICOMweb) port."""
        if self._http_port is None:
            raise RuntimeError("OrthancServer has not been started")
        return self._http_port

    @property
    def dicom_port(self) -> int:
        """Orthanc's DICOM (DIMSE) port; its AE title is :attr:`aet`."""
        if self._dicom_port is None:
            raise RuntimeError("OrthancServer has not been started")
        return self._dicom_port

    @property
    def http_url(self) -> str:
        """Base URL of the REST API, e.g. ``http://127.0.0.1:40123`` (no trailing slash)."""
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """DICOMweb root to configure as a gateway destination (no trailing slash)."""
        return f"{self.http_url}/dicom-web"

    @property
    def client(self) -> httpx.Client:
        """An httpx client bound to :attr:`http_url`, valid while the server runs."""
        if self._client is None:
            raise RuntimeError("OrthancServer is not running")
        return self._client

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        """Write the config, start Orthanc by hand and wait until REST and DICOM answer."""
        if self._http_port is None:
            self._http_port = free_port()
            self._dicom_port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self._config(), indent=2))
        argv = [str(ORTHANC_BINARY)]
        if self.verbose:
            argv.append("--verbose")
        argv.append(str(self.config_path))
        # TCP_NODELAY=1 is read by DCMTK's network layer (Orthanc's DICOM side): without it,
        # Nagle's algorithm adds ~40 ms stalls to every small PDU exchange.
        self._process = ManagedProcess(
            argv, workdir=self.workdir, name="orthanc", env={"TCP_NODELAY": "1"}
        ).start()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self._process.kill()
            raise
        self._client = httpx.Client(base_url=self.http_url, timeout=60.0)
        return self

    def stop(self, timeout: float | None = None) -> int | None:
        """Stop Orthanc gracefully (SIGTERM, 3-5 s), SIGKILL after ``timeout``."""
        self._close_client()
        return super().stop(timeout)

    def kill(self) -> int | None:
        """SIGKILL Orthanc: instant; storage and index survive for a later :meth:`start`."""
        self._close_client()
        return super().kill()

    # -- content -----------------------------------------------------------------------------

    def sop_instance_uids(self) -> set[str]:
        """SOP Instance UIDs of every stored instance."""
        response = self.client.get("/instances", params={"expand": ""})
        response.raise_for_status()
        return {item["MainDicomTags"]["SOPInstanceUID"] for item in response.json()}

    def instance_count(self) -> int:
        """Number of stored instances (``/statistics``; cheap even with many instances)."""
        response = self.client.get("/statistics")
        response.raise_for_status()
        return int(response.json()["CountInstances"])

    def orthanc_id(self, sop_instance_uid: str) -> str | None:
        """Orthanc's internal id for an instance, or ``None`` if it is not stored."""
        response = self.client.post("/tools/lookup", content=sop_instance_uid)
        response.raise_for_status()
        for hit in response.json():
            if hit.get("Type") == "Instance":
                return str(hit["ID"])
        return None

    def instance_file(self, sop_instance_uid: str) -> bytes:
        """The stored Part 10 file of one instance; ``KeyError`` if it is not stored."""
        orthanc_id = self.orthanc_id(sop_instance_uid)
        if orthanc_id is None:
            raise KeyError(sop_instance_uid)
        response = self.client.get(f"/instances/{orthanc_id}/file")
        response.raise_for_status()
        return response.content

    def upload(self, path: Path) -> str:
        """Store a Part 10 file through the REST API (to seed Orthanc as a PACS); returns its id.

        This bypasses DICOM and DICOMweb on purpose: it is for arranging a test, not for
        exercising a protocol.
        """
        response = self.client.post("/instances", content=Path(path).read_bytes())
        response.raise_for_status()
        return str(response.json()["ID"])

    def reset(self) -> None:
        """Delete every stored instance (patient by patient) through the REST API."""
        response = self.client.get("/patients")
        response.raise_for_status()
        for patient_id in response.json():
            self.client.delete(f"/patients/{patient_id}").raise_for_status()

    def wait_for_instances(self, count: int, timeout: float = 30.0) -> set[str]:
        """Wait until at least ``count`` instances are stored; return their SOP Instance UIDs."""
        deadline = time.monotonic() + timeout
        while True:
            if self.instance_count() >= count:
                return self.sop_instance_uids()
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"Orthanc holds {self.instance_count()} instances, expected {count} "
                    f"within {timeout:.1f}s"
                )
            time.sleep(0.1)

    # -- internals ---------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "Name": f"harness-{self.aet}",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.storage_dir),
            "StorageCompression": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            # Big STOW bodies take longer than civetweb's default 30 s request timeout.
            "HttpRequestTimeout": 600,
            "HttpTimeout": 60,
            "WebDavEnabled": False,
            "DicomServerEnabled": True,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "DicomCheckCalledAet": False,
            "DicomScpTimeout": 30,
            "DicomScuTimeout": 30,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            # Any caller on loopback may query/retrieve: tests register peers as they need.
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": {
                name: [aet, host, port] for name, (aet, host, port) in self.modalities.items()
            },
            "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            # Seconds without new instances before a series/study counts as stable.
            "StableAge": 2,
            "ConcurrentJobs": 1,
            "SaveJobs": False,
        }
        config.update(self.config_overrides)
        return config

    def _wait_ready(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        wait_for_port(self.http_port, timeout, process=self._process)
        with httpx.Client(base_url=self.http_url, timeout=2.0) as probe:
            while True:
                if not self._process.alive:
                    raise ProcessDiedError(
                        f"Orthanc exited with {self._process.returncode}; log tail:\n"
                        f"{self._process.log_tail()}"
                    )
                try:
                    if probe.get("/system").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"Orthanc /system did not answer within {timeout:.1f}s; log tail:\n"
                        f"{self._process.log_tail()}"
                    )
                time.sleep(0.05)
        wait_for_port(self.dicom_port, max(deadline - time.monotonic(), 1.0), process=self._process)

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
