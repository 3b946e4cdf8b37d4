"""Start the DIMSE listener with the gateway's policy, and build its TLS contexts.

Policy lives here and in the modules it wires together: which SOP classes and transfer syntaxes
we accept (gateway/dimse/negotiation.py: Verification and every storage SOP class, in every
transfer syntax, plus the message services' SOP classes: query/retrieve in query.py and
retrieve.py), who may associate (handlers.py), limits and timeouts (association.py), TLS.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Sequence

from gateway.config import Settings, TlsSettings
from gateway.dimse.association import Limits
from gateway.dimse.handlers import DimseHandlers, MessageService
from gateway.dimse.listener import DimseListener
from gateway.dimse.query import FindService
from gateway.dimse.retrieve import RetrieveService
from gateway.exceptions import ConfigError
from gateway.ingest import Ingestor
from gateway.telemetry import Telemetry

log = logging.getLogger(__name__)


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
    services: Sequence[MessageService] = (),
) -> DimseListener:
    """Start the DIMSE listener in background threads and return the running listener.

    `services` are the message services offered besides Verification and Storage (storage
    commitment: gateway/dimse/commitment.py); negotiation offers their SOP classes.
    """
    dimse = settings.dimse
    handlers = DimseHandlers(
        settings,
        ingestor,
        audit,
        telemetry,
        services=[
            FindService(settings, ingestor.db, ingestor.spool, audit),
            RetrieveService(
                settings, ingestor.db, ingestor.spool, audit, client_tls=client_ssl_context
            ),
            *services,
        ],
    )
    endpoint = settings.node.dimse
    tls = dimse.tls
    listener = DimseListener(
        (endpoint.host, endpoint.port),
        services=handlers,
        limits=Limits(
            max_pdu=dimse.max_pdu,
            acse_timeout=dimse.acse_timeout,
            network_timeout=dimse.network_timeout,
        ),
        staging_dir=ingestor.staging_dir,
        max_associations=dimse.max_associations,
        ssl_context=server_ssl_context(tls) if tls else None,
        handshake_timeout=dimse.acse_timeout,
        on_tls_refused=handlers.on_tls_refused,
    )
    listener.start()
    log.info(
        "DIMSE listener %s on %s:%s%s",
        settings.node.ae_title,
        endpoint.host,
        listener.server_address[1],
        " (TLS)" if tls else "",
    )
    return listener
