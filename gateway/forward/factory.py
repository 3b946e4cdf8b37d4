"""Build the sender for a configured destination (the only place that knows every kind)."""

from __future__ import annotations

from gateway.config import Destination, DicomwebDestination, DimseDestination
from gateway.forward.base import Sender


def make_sender(destination: Destination, *, calling_ae_title: str) -> Sender:
    """A sender for `destination`; senders import their wire libraries lazily."""
    if isinstance(destination, DicomwebDestination):
        from gateway.auth.outbound import make_outbound_credentials
        from gateway.forward.stowrs import StowRsSender

        credentials = (
            None
            if destination.auth is None
            else make_outbound_credentials(
                destination.auth, destination=destination.name, verify=destination.verify
            )
        )
        return StowRsSender(
            name=destination.name,
            url=destination.url,
            timeout=destination.timeout,
            max_batch_bytes=destination.max_batch_bytes,
            verify=destination.verify,
            auth=credentials.headers if credentials else None,
            on_unauthorized=credentials.invalidate if credentials else None,
        )
    if isinstance(destination, DimseDestination):
        from gateway.dimse.ae import client_ssl_context
        from gateway.forward.cstore import CStoreSender

        return CStoreSender(
            name=destination.name,
            ae_title=destination.ae_title,
            host=destination.host,
            port=destination.port,
            calling_ae_title=destination.calling_ae_title or calling_ae_title,
            acse_timeout=destination.acse_timeout,
            dimse_timeout=destination.dimse_timeout,
            network_timeout=destination.network_timeout,
            ssl_context=(
                client_ssl_context(destination.tls, f"destinations.{destination.name}.tls")
                if destination.tls
                else None
            ),
        )
    raise TypeError(f"unknown destination kind {type(destination).__name__}")
