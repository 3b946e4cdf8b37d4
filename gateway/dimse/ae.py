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
from gateway.ingest import Ingestor

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


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """A TLS context for the listener; requires client certificates when configured."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=tls.cert, keyfile=tls.key)
    if tls.ca is not None:
        context.load_verify_locations(cafile=tls.ca)
    context.verify_mode = (
        ssl.CERT_REQUIRED
        if tls.require_client_cert
        else ssl.CERT_OPTIONAL
        if tls.ca is not None
        else ssl.CERT_NONE
    )
    return context


def start_listener(
    settings: Settings, ingestor: Ingestor, audit: Callable[..., None]
) -> ThreadedAssociationServer:
    """Start the DIMSE listener in background threads and return the running server."""
    configure_pynetdicom(str(ingestor.staging_dir))
    ae = build_ae(settings)
    handlers = DimseHandlers(settings, ingestor, audit)
    endpoint = settings.node.dimse
    tls = settings.dimse.tls
    server = ae.start_server(
        (endpoint.host, endpoint.port),
        block=False,
        evt_handlers=handlers.bindings(),
        ssl_context=server_ssl_context(tls) if tls else None,
    )
    assert server is not None  # block=False always returns the running server
    log.info(
        "DIMSE listener %s on %s:%s%s",
        settings.node.ae_title,
        endpoint.host,
        server.server_address[1],
        " (TLS)" if tls else "",
    )
    return server
