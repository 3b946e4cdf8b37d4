"""Audit events for every DIMSE association: accepted, rejected, released or aborted.

Who is the calling AE title (the `actor`, so `dicom-gateway audit --actor CT1` finds it) and
the peer's address; with TLS, the subject of the client certificate too. Rejections by our
own allow-list are recorded where they happen (gateway/dimse/handlers.py); this module records
the ones pynetdicom makes (wrong called AE title, too many associations). C-STORE outcomes
are recorded by ingest (`instance.received`, `instance.refused`) and by the store handler
(`instance.failed`).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.events import EventHandlerType

_REJECT_REASONS = {
    (0x01, 0x01): "no reason given",
    (0x01, 0x02): "application context name not supported",
    (0x01, 0x03): "calling AE title not recognised",
    (0x01, 0x07): "called AE title not recognised",
    (0x02, 0x01): "no reason given (ACSE)",
    (0x02, 0x02): "protocol version not supported",
    (0x03, 0x01): "temporary congestion",
    (0x03, 0x02): "local limit exceeded (dimse.max_associations)",
}

_SHORT = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
}


class AssociationAudit:
    """pynetdicom notification handlers that write one audit event per association step."""

    def __init__(self, audit: Callable[..., None]) -> None:
        self._audit = audit  # must not raise (DimseHandlers._safe_audit)

    def bindings(self) -> list[EventHandlerType]:
        return [
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_RELEASED, self.on_released),
            (evt.EVT_ABORTED, self.on_aborted),
        ]

    def on_accepted(self, event: Any) -> None:
        detail = _who(event.assoc)
        detail["contexts"] = len(event.assoc.accepted_contexts)
        self._record(event, "association.accepted", "accepted", detail)

    def on_rejected(self, event: Any) -> None:
        detail = _who(event.assoc)
        primitive = getattr(event.assoc.acceptor, "primitive", None)
        key = (getattr(primitive, "result_source", None), getattr(primitive, "diagnostic", None))
        detail["reason"] = _REJECT_REASONS.get(key, f"source/diagnostic {key}")  # type: ignore[arg-type]
        self._record(event, "association.rejected", "rejected", detail)

    def on_released(self, event: Any) -> None:
        self._record(event, "association.released", "released", _who(event.assoc))

    def on_aborted(self, event: Any) -> None:
        self._record(event, "association.aborted", "aborted", _who(event.assoc))

    def _record(self, event: Any, kind: str, outcome: str, detail: dict[str, Any]) -> None:
        self._audit(kind, outcome=outcome, actor=_calling_ae(event.assoc), detail=detail)


def _calling_ae(assoc: Any) -> str | None:
    primitive = getattr(assoc.requestor, "primitive", None)
    title = getattr(primitive, "calling_ae_title", None) or getattr(assoc.requestor, "ae_title", "")
    return str(title).strip() or None


def _who(assoc: Any) -> dict[str, Any]:
    primitive = getattr(assoc.requestor, "primitive", None)
    detail: dict[str, Any] = {
        "peer": str(assoc.requestor.address),
        "called_ae": str(getattr(primitive, "called_ae_title", "") or "").strip() or None,
    }
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if isinstance(sock, ssl.SSLSocket):
        detail["tls"] = sock.version()
        detail["client_cert"] = _subject(sock)
    return detail


def _subject(sock: ssl.SSLSocket) -> str | None:
    try:
        cert = sock.getpeercert()
    except (OSError, ValueError):
        return None
    if not cert:
        return None
    subject: Any = cert.get("subject", ())
    names = [f"{_SHORT.get(key, key)}={value}" for rdn in subject for key, value in rdn]
    return ",".join(names) or None
