"""Garbage on the DIMSE port: every connection is dropped, logged, the process stays up and
nothing stored is touched. Includes a PDU header announcing ~4 GiB (dropped at once instead of
read into memory) and a peer that connects and says nothing (dropped after acse_timeout).
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.scu import header_ids, send_files
from tests.harness import LOOPBACK, GatewayProcess, free_port, make_ct_series, write_config
from tests.security.hostile import staging_leftovers, stored_state

ACSE_TIMEOUT = 2
STALL = 3  # dimse.network_timeout: a peer stalled mid-PDU this long is dropped


def _pdu(kind: int, payload: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BBL", kind, 0, len(payload) if length is None else length) + payload


GARBAGE = {
    "random bytes": random.Random(3).randbytes(4000),
    "unknown PDU type": _pdu(0x55, b"abcd"),
    "truncated PDU header": b"\x01\x00\x00",
    "A-ASSOCIATE-RQ of garbage": _pdu(0x01, random.Random(4).randbytes(300)),
    "A-ASSOCIATE-RQ shorter than announced": _pdu(0x01, b"\x00\x01" + b"x" * 50, length=5000),
    "P-DATA-TF before association": _pdu(0x04, bytes(12)),
    "A-RELEASE-RQ before association": _pdu(0x05, bytes(4)),
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path]]:
    workdir = tmp_path_factory.mktemp("hostile-dimse")
    config = write_config(
        workdir / "gateway.yaml",
        dimse_port=free_port(),
        spool=workdir / "spool",
        database=workdir / "gateway.db",
        destinations={},
        routes=[],
        extra={"dimse": {"acse_timeout": ACSE_TIMEOUT, "network_timeout": STALL, "max_pdu": 65536}},
    )
    process = GatewayProcess(config, workdir)
    process.start()
    good = make_ct_series(workdir / "good", 2, rows=32, cols=32)
    assert set(send_files(good, process.dimse_port).values()) == {0}
    yield process, workdir
    process.stop()


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass  # reset counts as closed
    return True


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_pdus_are_dropped(gateway: tuple[GatewayProcess, Path], name: str) -> None:
    process, workdir = gateway
    before = stored_state(workdir)
    with socket.create_connection((LOOPBACK, process.dimse_port)) as sock:
        sock.sendall(GARBAGE[name])
        assert _closed_within(sock, STALL + 5), f"{name}: connection left open"
    assert process.alive and process.echo() == 0
    assert stored_state(workdir) == before
    assert staging_leftovers(workdir) == []


def test_a_huge_announced_pdu_is_not_read_into_memory(gateway: tuple[GatewayProcess, Path]) -> None:
    process, workdir = gateway
    before = stored_state(workdir)
    with socket.create_connection((LOOPBACK, process.dimse_port)) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0))
        sent = 0
        block = bytes(1 << 20)
        started = time.monotonic()
        try:
            while sent < 256 << 20 and time.monotonic() - started < 10:
                sock.sendall(block)
                sent += len(block)
        except OSError:
            pass  # the gateway hung up: what we want
        assert sent < 64 << 20, f"the gateway kept reading ({sent >> 20} MiB)"
    assert process.alive and process.echo() == 0
    assert stored_state(workdir) == before
    assert "announced a 4294967280-byte PDU" in process.log_text()


def test_a_silent_peer_is_dropped_after_the_acse_timeout(
    gateway: tuple[GatewayProcess, Path],
) -> None:
    process, _ = gateway
    with socket.create_connection((LOOPBACK, process.dimse_port)) as sock:
        started = time.monotonic()
        assert _closed_within(sock, ACSE_TIMEOUT + 5)
        assert time.monotonic() - started >= ACSE_TIMEOUT - 0.5
    assert process.alive and process.echo() == 0


def test_the_good_study_is_still_intact(gateway: tuple[GatewayProcess, Path]) -> None:
    process, workdir = gateway
    files, rows = stored_state(workdir)
    good = sorted((workdir / "good").glob("*.dcm")) or sorted(
        p for p in (workdir / "good").rglob("*") if p.is_file()
    )
    assert {row[0] for row in rows} == {header_ids(path)[1] for path in good}
    assert len(files) == 2
    assert process.alive
    log = process.log_text()
    assert "unknown PDU type 0x55" in log  # what was refused is logged, and why
    assert "the A-ASSOCIATE-RQ cannot be decoded" in log
    assert "the peer stalled in the middle of a PDU" in log
