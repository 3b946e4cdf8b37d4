"""The seam between the delivery queue and the wire: what a sender gets and what it reports.

A sender receives a batch of instances of one study for one destination and returns one
`SendResult` per instance. It never raises for a per-instance failure; connection-level failures
become a TRANSIENT result for every instance of the batch, so the worker settles each delivery
on its own. Senders are used from one worker thread at a time.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol


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
