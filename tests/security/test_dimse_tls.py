"""DICOM TLS with DCMTK: storescu/echoscu `+tls` into the gateway, the gateway out to storescp.

A CA, server and client certificates are made per test with `cryptography`. The listener
requires client certificates from that CA; a client with a certificate from another CA, with
no certificate, or without TLS is refused, logged and audited, and the process stays up. A
client that connects and never starts the handshake does not hold up anyone else.
"""

from __future__ import annotations

import socket
import sqlite3
import ssl
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE

from tests.e2e.scu import header_ids
from tests.harness import (
    LOOPBACK,
    GatewayProcess,
    StoreSCP,
    echoscu,
    free_port,
    make_ct_series,
    require_binary,
    storescu,
    wait_until,
    write_config,
)
from tests.security.pki import CertificateAuthority, Issued

pytestmark = [pytest.mark.dcmtk]

VERIFICATION = "1.2.840.10008.1.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"


class TlsGatewayProcess(GatewayProcess):
    """The harness's gateway process, probed for readiness over TLS with a client cert."""

    client: Issued
    ca: Path

    def echo(self, timeout: float = 5.0) -> int | None:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(self.client.cert, self.client.key)
        ae = AE(ae_title=self.probe_aet)
        ae.add_requested_context(VERIFICATION)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        assoc = ae.associate(
            self.dimse_host, self.dimse_port, ae_title=self.ae_title, tls_args=(context, LOOPBACK)
        )
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


class Pki:
    def __init__(self, folder: Path) -> None:
        self.ca = CertificateAuthority("hospital", folder)
        self.gateway = self.ca.issue("gateway", server=True)
        self.gateway_client = self.ca.issue("gateway-client", server=False)
        self.modality = self.ca.issue("MODALITY", server=False)
        self.pacs = self.ca.issue("pacs", server=True)
        self.rogue = CertificateAuthority("rogue", folder / "rogue").issue("intruder", server=False)

    def tls_args(self, who: Issued) -> list[str]:
        return ["+tls", str(who.key), str(who.cert), "+cf", str(self.ca.cert)]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


@pytest.fixture
def pacs(tmp_path: Path, pki: Pki) -> Iterator[StoreSCP]:
    require_binary("storescp")
    scp = StoreSCP(
        tmp_path / "pacs" / "received",
        aet="PACS",
        extra_args=[*pki.tls_args(pki.pacs), "--require-peer-cert"],
    )
    scp.start()
    yield scp
    scp.stop()


@pytest.fixture
def gateway(tmp_path: Path, pki: Pki, pacs: StoreSCP) -> Iterator[TlsGatewayProcess]:
    require_binary("echoscu")
    require_binary("storescu")
    config = write_config(
        tmp_path / "gateway.yaml",
        dimse_port=free_port(),
        spool=tmp_path / "spool",
        database=tmp_path / "gateway.db",
        destinations={
            "pacs": {
                "type": "dimse",
                "ae_title": "PACS",
                "host": LOOPBACK,
                "port": pacs.port,
                "retry": {"initial_backoff": 0.2},
                "tls": {
                    "cert": str(pki.gateway_client.cert),
                    "key": str(pki.gateway_client.key),
                    "ca": str(pki.ca.cert),
                },
            }
        },
        routes=[{"name": "all", "forward": ["pacs"]}],
        extra={
            "dimse": {
                "acse_timeout": 5,
                "move_destinations": {
                    "PACS": {
                        "host": LOOPBACK,
                        "port": pacs.port,
                        "tls": {
                            "cert": str(pki.gateway_client.cert),
                            "key": str(pki.gateway_client.key),
                            "ca": str(pki.ca.cert),
                        },
                    }
                },
                "tls": {
                    "cert": str(pki.gateway.cert),
                    "key": str(pki.gateway.key),
                    "ca": str(pki.ca.cert),
                    "require_client_cert": True,
                },
            }
        },
    )
    process = TlsGatewayProcess(config, tmp_path)
    process.client, process.ca = pki.modality, pki.ca.cert
    process.start()
    yield process
    process.stop()


def _events(tmp_path: Path, kind: str) -> list[tuple[str, str, str]]:
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        return list(db.execute("SELECT actor, outcome, detail FROM events WHERE kind = ?", (kind,)))


def test_dcmtk_tls_in_and_tls_out(
    gateway: TlsGatewayProcess, pki: Pki, pacs: StoreSCP, tmp_path: Path
) -> None:
    echo = echoscu(
        gateway.dimse_port,
        called_aet="GATEWAY",
        calling_aet="MODALITY",
        extra_args=pki.tls_args(pki.modality),
    )
    assert echo.returncode == 0, echo.stderr

    files = make_ct_series(tmp_path / "ct", 3, rows=32, cols=32)
    sent = storescu(
        files,
        gateway.dimse_port,
        called_aet="GATEWAY",
        calling_aet="MODALITY",
        extra_args=pki.tls_args(pki.modality),
    )
    assert sent.returncode == 0, sent.stderr
    expected = {header_ids(path)[1] for path in files}
    wait_until(lambda: pacs.received_sop_instance_uids() == expected, timeout=30)
    assert "TLS" in pacs.log_text() or "tls" in pacs.log_text().lower()

    accepted = _events(tmp_path, "association.accepted")
    assert any(
        actor == "MODALITY" and "CN=MODALITY" in detail and "TLSv1" in detail
        for actor, _, detail in accepted
    )


def test_c_move_over_tls_to_a_tls_destination(
    gateway: TlsGatewayProcess, pki: Pki, pacs: StoreSCP, tmp_path: Path
) -> None:
    files = make_ct_series(tmp_path / "ct", 2, rows=32, cols=32)
    sent = storescu(
        files,
        gateway.dimse_port,
        called_aet="GATEWAY",
        calling_aet="MODALITY",
        extra_args=pki.tls_args(pki.modality),
    )
    assert sent.returncode == 0, sent.stderr
    expected = {header_ids(path)[1] for path in files}
    wait_until(lambda: pacs.received_sop_instance_uids() == expected, timeout=30)
    for received in pacs.outdir.iterdir():  # forwarded by routing; now retrieve them again
        received.unlink()
    # movescu has no TLS: pynetdicom asks, over mutual TLS; the gateway sends over TLS too.
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    context.load_cert_chain(pki.modality.cert, pki.modality.key)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(STUDY_ROOT_MOVE)
    assoc = ae.associate(
        LOOPBACK, gateway.dimse_port, ae_title="GATEWAY", tls_args=(context, LOOPBACK)
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    responses = list(assoc.send_c_move(query, "PACS", STUDY_ROOT_MOVE))
    assoc.release()
    assert int(responses[-1][0].Status) == 0x0000
    assert pacs.received_sop_instance_uids() == expected


@pytest.mark.parametrize("client", ["untrusted certificate", "no certificate", "plain TCP"])
def test_clients_without_a_trusted_certificate_are_refused(
    gateway: TlsGatewayProcess, pki: Pki, tmp_path: Path, client: str
) -> None:
    extra = {
        "untrusted certificate": [
            "+tls",
            str(pki.rogue.key),
            str(pki.rogue.cert),
            "+cf",
            str(pki.ca.cert),
        ],
        "no certificate": ["+tla", "+cf", str(pki.ca.cert)],
        "plain TCP": [],
    }[client]
    refused = echoscu(
        gateway.dimse_port,
        called_aet="GATEWAY",
        calling_aet="INTRUDER",
        extra_args=extra,
        timeout=60,
    )
    assert refused.returncode != 0
    wait_until(lambda: len(_events(tmp_path, "association.rejected")) >= 1, timeout=10)
    reasons = [detail for _, _, detail in _events(tmp_path, "association.rejected")]
    assert any("TLS handshake" in reason or "handshake" in reason for reason in reasons)
    assert "refused a DIMSE TLS connection" in gateway.log_text()
    assert gateway.alive and gateway.echo() == 0
    assert not any(actor == "INTRUDER" for actor, _, _ in _events(tmp_path, "association.accepted"))


def test_a_silent_connection_does_not_block_the_tls_listener(
    gateway: TlsGatewayProcess, pki: Pki
) -> None:
    with socket.create_connection((LOOPBACK, gateway.dimse_port)) as silent:
        echo = echoscu(
            gateway.dimse_port,
            called_aet="GATEWAY",
            calling_aet="MODALITY",
            extra_args=pki.tls_args(pki.modality),
            timeout=15,
        )
        assert echo.returncode == 0, echo.stderr
        silent.settimeout(15)
        assert silent.recv(1) == b"", "closed after dimse.acse_timeout without a handshake"
    assert "no TLS handshake within the time limit" in gateway.log_text()
