"""Build the sender for a configured destination (the only place that knows every kind)."""

from __future__ import annotations

from gateway.config import Destination, DicomwebDestination, DimseDestination
from gateway.forward.base import Sender


def make_sender(destination: Destination, *, calling_ae_title: str) -> Sender:
    """A sender for `destination`; senders import their wire libraries lazily."""
    if isinstance(destination, DicomwebDestination):
        from gateway.forward.stowrs import StowRsSender

        return StowRsSender(
            name=destination.name,
            url=destination.url,
            timeout=destination.timeout,
            max_batch_bytes=destination.max_batch_bytes,
            verify=destination.verify,
        )
    if isinstance(destination, DimseDestination):
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
        )
    raise TypeError(f"unknown destination kind {type(destination).__name__}")
