"""Build and start the pynetdicom Application Entity that listens for modalities and PACS.

Policy lives here: which SOP classes and transfer syntaxes we accept (every storage class
pynetdicom knows, with every transfer syntax pydicom knows, because we store what we receive
and never transcode on the way in), association limits, timeouts, TLS and TCP_NODELAY.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
from collections.abc import Callable

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, _config
from pynetdicom.sop_class import _STORAGE_CLASSES
from pynetdicom.transport import ThreadedAssociationServer

from gateway.config import Settings, TlsSettings
from gateway.dimse.handlers import DimseHandlers
from gateway.dimse.server import start_server
from gateway.exceptions import ConfigError
from gateway.ingest import Ingestor
from gateway.telemetry import Telemetry

log = logging.getLogger(__name__)

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"


def configure_pynetdicom(staging_dir: str) -> None:
    """Process-wide pynetdicom switches the gateway relies on.

    Received data sets stream to a temporary file (never held in memory); pointing Python's
    temporary folder at the spool's staging folder lets ingest rename that file into the spool
    instead of copying it. Sent data sets stream from the spool file's own bytes.
    """
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.STORE_SEND_CHUNKED_DATASET = True
    _config.LOG_HANDLER_LEVEL = "none"
    tempfile.tempdir = staging_dir


def build_ae(settings: Settings) -> AE:
    """An AE that accepts Verification and every storage SOP class in every transfer syntax."""
    dimse = settings.dimse
    ae = AE(ae_title=settings.node.ae_title)
    ae.maximum_associations = dimse.max_associations
    ae.acse_timeout = dimse.acse_timeout
    ae.dimse_timeout = dimse.dimse_timeout
    ae.network_timeout = dimse.network_timeout
    ae.maximum_pdu_size = dimse.max_pdu
    ae.require_called_aet = dimse.require_called_ae
    syntaxes = list(AllTransferSyntaxes)
    ae.add_supported_context(VERIFICATION_SOP_CLASS)
    for uid in _STORAGE_CLASSES.values():
        ae.add_supported_context(uid, syntaxes)
    return ae


def server_ssl_context(tls: TlsSettings, key: str = "dimse.tls") -> ssl.SSLContext:
    """A TLS context for the listener; requires client certificates when configured.

    Client certificates are checked against `tls.ca` only, never the system's public CAs
    (a certificate a public CA issued to anybody must not open the door).
    """
    if tls.require_client_cert and tls.ca is None:
        raise ConfigError(f"{key}.require_client_cert needs {key}.ca, the CA of the clients")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_cert(context, tls, key)
    if tls.ca is not None:
        try:
            context.load_verify_locations(cafile=tls.ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{key}.ca: cannot load {tls.ca}: {exc}") from exc
    context.verify_mode = (
        ssl.CERT_REQUIRED
        if tls.require_client_cert
        else ssl.CERT_OPTIONAL
        if tls.ca is not None
        else ssl.CERT_NONE
    )
    return context


def client_ssl_context(tls: TlsSettings, key: str) -> ssl.SSLContext:
    """A TLS context for C-STORE to a destination: verify the peer and its host name against
    `tls.ca` (else the system CAs) and present our certificate."""
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=None if tls.ca is None else str(tls.ca)
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{key}.ca: cannot load {tls.ca}: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_cert(context, tls, key)
    return context


def _load_cert(context: ssl.SSLContext, tls: TlsSettings, key: str) -> None:
    try:
        context.load_cert_chain(certfile=tls.cert, keyfile=tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{key}: cannot load cert {tls.cert} with key {tls.key}: {exc}; both must be PEM "
            "files and the key must match the certificate"
        ) from exc


def start_listener(
    settings: Settings,
    ingestor: Ingestor,
    audit: Callable[..., None],
    telemetry: Telemetry | None = None,
) -> ThreadedAssociationServer:
    """Start the DIMSE listener in background threads and return the running server."""
    configure_pynetdicom(str(ingestor.staging_dir))
    ae = build_ae(settings)
    handlers = DimseHandlers(settings, ingestor, audit, telemetry)
    endpoint = settings.node.dimse
    tls = settings.dimse.tls
    server = start_server(  # TLS handshakes off the accept loop, see gateway/dimse/server.py
        ae,
        (endpoint.host, endpoint.port),
        evt_handlers=handlers.bindings(),
        ssl_context=server_ssl_context(tls) if tls else None,
        handshake_timeout=settings.dimse.acse_timeout,
        stall_timeout=settings.dimse.network_timeout,
        on_refused=handlers.on_tls_refused,
    )
    log.info(
        "DIMSE listener %s on %s:%s%s",
        settings.node.ae_title,
        endpoint.host,
        server.server_address[1],
        " (TLS)" if tls else "",
    )
    return server
