"""The seam between the delivery queue and the wire: what a sender gets and what it reports.

A sender receives a batch of instances of one study for one destination and returns one
`SendResult` per instance. It never raises for a per-instance failure; connection-level failures
become a TRANSIENT result for every instance of the batch, so the worker settles each delivery
on its own. Senders are used from one worker thread at a time.

A sender may also offer an *idle probe* (`probe()`): a check that its peer is reachable and
would take deliveries, without sending any instance (C-ECHO, a QIDO-RS request, HeadBucket).
The breaker (gateway/forward/health.py) uses it only while a destination is `down` and there
is no queued instance to probe with; `idle_probe()` is how callers reach it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol


class Outcome(enum.StrEnum):
    """How one delivery attempt ended."""

    DELIVERED = "delivered"
    TRANSIENT = "transient"  # retry later
    PERMANENT = "permanent"  # dead-letter now


@dataclass(frozen=True, slots=True)
class OutgoingInstance:
    """One stored instance to send.

    `open()` returns its DICOM Part 10 file as a binary stream; `local_file()` yields a path to
    the same bytes on local disk (the spool file itself, or a temporary copy for S3) for senders
    such as pynetdicom that read from a path.
    """

    delivery_id: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size: int
    open: Callable[[], BinaryIO]
    local_file: Callable[[], AbstractContextManager[Path]]
    trace_context: str | None = None
    received_at: float | None = None  # epoch seconds, for receive-to-delivered latency
    # hex SHA-256 of exactly the bytes `open()` returns, or None when unknown (a middleware
    # that changes the bytes must reset it); the S3 sender's duplicate check uses it
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the destination said about one instance.

    `status` is the wire status as text ("0x0000", "0xB007", "HTTP 200", "connection refused")
    and `detail` a sentence an operator can act on.
    """

    delivery_id: int
    outcome: Outcome
    status: str
    detail: str = ""
    warning: bool = False


class Sender(Protocol):
    """Sends batches to one configured destination."""

    name: str

    def send(self, batch: Sequence[OutgoingInstance]) -> list[SendResult]:
        """Send every instance of `batch` (one study); return one result per instance."""
        ...

    def close(self) -> None:
        """Release connections; the sender may be used again afterwards."""
        ...


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What a destination answered to an idle probe (no instance sent).

    `state` is what the breaker becomes: `up` (the peer answered and nothing it said predicts a
    failed delivery), `degraded` (it answers, but the probe could not confirm it would store:
    deliveries will tell), `down` (unreachable, busy, or refusing in a way every delivery would
    be refused too). `probe` names the check ("C-ECHO", "QIDO-RS", "HeadBucket"), `status` is
    the wire status as text and `detail` a sentence an operator can act on.
    """

    state: Literal["up", "degraded", "down"]
    probe: str
    status: str
    detail: str = ""


class ProbingSender(Sender, Protocol):
    """A sender that can check its peer without sending an instance (optional)."""

    def probe(self) -> ProbeResult | None:
        """Check the peer once; None when this sender (or the one it wraps) cannot."""
        ...


def idle_probe(sender: Sender) -> ProbeResult | None:
    """Probe `sender`'s peer if the sender can; None when it has no idle probe.

    Senders without a `probe` method are still senders: the probe is an optional capability,
    and a wrapper (tracing, transforms) forwards it through this function.
    """
    probe = getattr(sender, "probe", None)
    if probe is None:
        return None
    result = probe()
    assert result is None or isinstance(result, ProbeResult)
    return result
