"""Sender middleware: each instance of a batch is transformed, then the batch is sent.

It sits between the worker's lease and the destination's sender (inside the tracing
wrapper, so an attempt's span covers the transform and names the stored instance). Each
instance is transformed on its own; one that cannot be transformed is settled on its own and
the rest of the batch is still sent:

=====================================  ==========  ==========================================
what went wrong                        Outcome     why
=====================================  ==========  ==========================================
TransformError (refused, unreadable,   PERMANENT   the same bytes give the same answer; the
no decoder, ...)                                   detail says what to change
any other error inside a step          PERMANENT   the same, named after the step
reading the spool or writing the       TRANSIENT   disk space and storage come back
temporary file failed (OSError,
SpoolError)
=====================================  ==========  ==========================================

A delivered (or failed) attempt's detail says what was done and, when UIDs changed, the
SOP Instance UID it was sent as: `dicom-gateway trace STUDY_UID` answers "what did the
destination receive for this instance".
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import Destination
from gateway.exceptions import SpoolError
from gateway.forward.base import (
    Outcome,
    OutgoingInstance,
    ProbeResult,
    Sender,
    SendResult,
    idle_probe,
)
from gateway.transform.errors import TransformError

if TYPE_CHECKING:
    from gateway.transform.pipeline import Transformer

log = logging.getLogger(__name__)

STATUS = "transform failed"


def transformer_for(destination: Destination, *, workdir: Path | None = None) -> Transformer | None:
    """The transformer for `destination`'s `transform` section (None without one).

    Loads the de-identification secret, so a missing one stops the gateway at start.
    `workdir` holds the transformed copies: the gateway passes the spool's staging folder, whose
    housekeeping removes a copy a crash left behind (it may hold patient data) after a day.
    """
    settings = destination.transform
    if settings is None:
        return None
    # Imported only when a destination transforms: the action table and pixel transcoding
    # are not loaded into a gateway that only moves bytes.
    from gateway.transform.pipeline import Transformer

    return Transformer(settings, key=f"destinations.{destination.name}.transform", workdir=workdir)


def with_transform(sender: Sender, transformer: Transformer | None) -> Sender:
    """`sender` behind a TransformingSender, or `sender` itself without a transformer."""
    return sender if transformer is None else TransformingSender(sender, transformer)


class TransformingSender:
    """Wraps a sender of one destination; see the module docstring."""

    def __init__(self, inner: Sender, transformer: Transformer) -> None:
        self.name = inner.name
        self._inner = inner
        self._transformer = transformer

    def send(self, batch: Sequence[OutgoingInstance]) -> list[SendResult]:
        results: dict[int, SendResult] = {}
        notes: dict[int, str] = {}
        with contextlib.ExitStack() as cleanup:  # temporary copies go when the send is done
            ready: list[OutgoingInstance] = []
            for inst in batch:
                try:
                    prepared = cleanup.enter_context(self._transformer.prepare(inst))
                except Exception as exc:
                    results[inst.delivery_id] = self._failed(inst, exc)
                    continue
                ready.append(prepared.instance)
                notes[inst.delivery_id] = prepared.note
            if ready:
                for result in self._inner.send(ready):
                    note = notes.get(result.delivery_id, "")
                    if note:
                        detail = f"{result.detail}; {note}" if result.detail else note
                        result = replace(result, detail=detail)
                    results[result.delivery_id] = result
        return [results[inst.delivery_id] for inst in batch if inst.delivery_id in results]

    def close(self) -> None:
        self._inner.close()

    def probe(self) -> ProbeResult | None:
        """The inner sender's idle probe: it sends no instance, so there is nothing to transform."""
        return idle_probe(self._inner)

    def _failed(self, inst: OutgoingInstance, exc: Exception) -> SendResult:
        if isinstance(exc, TransformError):
            outcome, detail = Outcome.PERMANENT, str(exc)
        elif isinstance(exc, OSError | SpoolError):
            outcome = Outcome.TRANSIENT
            detail = f"cannot read the stored instance or write its transformed copy: {exc}"
        else:  # a bug or an odd object: the same bytes would fail the same way
            outcome = Outcome.PERMANENT
            detail = f"transform failed: {type(exc).__name__}: {exc}"
            log.exception("transforming %s for %s failed", inst.sop_instance_uid, self.name)
        log.warning(
            "cannot transform %s for %s (%s): %s",
            inst.sop_instance_uid,
            self.name,
            outcome.value,
            detail,
        )
        return SendResult(inst.delivery_id, outcome, STATUS, detail)
