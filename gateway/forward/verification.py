"""The idle probe of a `dimse` destination: one association and one C-ECHO (PS3.4 Annex A).

While a destination is `down` with nothing queued (gateway/forward/health.py), this is how the
gateway notices that the peer is back without storing anything there. It uses exactly what a
C-STORE batch would: the destination's AE titles, TLS context and ACSE/DIMSE/network
timeouts, taken from its `CStoreSender`, so an echo that works predicts an association that
works.

==============================================  ==========  ===================================
Answer                                          state       why
==============================================  ==========  ===================================
association accepted, C-ECHO status 0x0000      up          the peer takes our associations
association accepted, other C-ECHO status       degraded    it answers but not cleanly; the
                                                            next C-STORE decides
association accepted but the Verification       degraded    a storage-only SCP; we cannot tell
context refused                                             more without storing
association rejected (any result or reason)     down        every C-STORE association would be
                                                            rejected the same way (a delivery
                                                            settles it TRANSIENT); the last
                                                            error names result, source and
                                                            reason, e.g. an AE title the peer
                                                            no longer knows
connection refused, unreachable, TLS failure    down        not reachable
aborted, no A-ASSOCIATE answer, no C-ECHO       down        not answering
response within dimse_timeout
==============================================  ==========  ===================================

A rejected association proves the peer is alive but refusing us. It stays `down` rather than
becoming `degraded`: a closed breaker would send the next batch into the same rejection and
open again after `failure_threshold` batches, so the alert would flap while the cause (the
peer's configuration of our AE title) stays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pynetdicom import AE, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from gateway.forward.base import ProbeResult
from gateway.forward.dimse_link import ResponseTap, association_failure, end_association

if TYPE_CHECKING:
    from gateway.forward.cstore import CStoreSender

PROBE = "C-ECHO"


def echo(sender: CStoreSender) -> ProbeResult:
    """Associate as `sender` would, send one C-ECHO, release; the table in the docstring."""
    peer = f"{sender.ae_title}@{sender.host}:{sender.port}"
    ae = AE(ae_title=sender.calling_ae_title)
    ae.acse_timeout = sender.acse_timeout
    ae.dimse_timeout = sender.dimse_timeout
    ae.network_timeout = sender.network_timeout
    ae.connection_timeout = sender.acse_timeout
    tap = ResponseTap()  # only for `connected`: refused and rejected read differently
    tls = (sender.ssl_context, sender.host) if sender.ssl_context is not None else None
    try:
        assoc = ae.associate(
            sender.host,
            sender.port,
            contexts=[build_context(Verification)],
            ae_title=sender.ae_title,
            max_pdu=sender.max_pdu,
            tls_args=tls,
            evt_handlers=tap.handlers(),
        )
    except OSError as exc:  # pynetdicom handles most socket errors itself; TLS setup may not
        return ProbeResult("down", PROBE, "connect failed", f"cannot connect to {peer}: {exc}")
    if not assoc.is_established:
        if tap.connected and assoc.rejected_contexts and not assoc.accepted_contexts:
            return ProbeResult(
                "degraded",
                PROBE,
                "context rejected",
                f"{peer} accepts the association but not the Verification SOP class; "
                "whether it stores is known once work for it arrives",
            )
        status, detail = association_failure(assoc, tap, peer)
        return ProbeResult("down", PROBE, status, detail)
    healthy = False
    try:
        response = assoc.send_c_echo()
        status = response.get("Status") if response is not None else None
        healthy = status is not None
    finally:
        end_association(assoc, release=healthy)
    if status is None:
        return ProbeResult(
            "down",
            PROBE,
            "no response",
            f"{peer} accepted the association but sent no C-ECHO response within "
            f"{sender.dimse_timeout:g} s",
        )
    text = f"0x{int(status):04X}"
    if int(status) == 0:
        return ProbeResult("up", PROBE, text, f"{peer} answered C-ECHO")
    return ProbeResult(
        "degraded", PROBE, text, f"{peer} answered C-ECHO with status {text}, not success"
    )
