"""Audit events for every DIMSE association: accepted, rejected, released or aborted.

Who is the calling AE title (the `actor`, so `dicom-gateway audit --actor CT1` finds it) and
the peer's address; with TLS, the subject of the client certificate too. C-STORE outcomes are
recorded by ingest (`instance.received`, `instance.refused`) and by the store handler
(`instance.failed`).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

from gateway.dimse.association import Association

_SHORT = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
}


class AssociationAudit:
    """Writes one audit event per association step."""

    def __init__(self, audit: Callable[..., None]) -> None:
        self._audit = audit  # must not raise (DimseHandlers._safe_audit)

    def accepted(self, association: Association) -> None:
        detail = _who(association)
        detail["contexts"] = len(association.contexts)
        self._record(association, "association.accepted", "accepted", detail)

    def rejected(self, calling_ae: str, peer: str, called_ae: str, reason: str) -> None:
        detail = {"peer": peer, "called_ae": called_ae or None, "reason": reason}
        self._audit(
            "association.rejected", outcome="rejected", actor=calling_ae or None, detail=detail
        )

    def ended(self, association: Association, how: str) -> None:
        """`how`: released, or aborted / closed (the connection ended without a release)."""
        if how == "released":
            self._record(association, "association.released", "released", _who(association))
        else:
            detail = _who(association)
            detail["how"] = how
            self._record(association, "association.aborted", "aborted", detail)

    def _record(
        self, association: Association, kind: str, outcome: str, detail: dict[str, Any]
    ) -> None:
        self._audit(kind, outcome=outcome, actor=association.calling_ae or None, detail=detail)


def _who(association: Association) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "peer": association.peer,
        "called_ae": association.called_ae or None,
    }
    sock = association.tls
    if sock is not None:
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
