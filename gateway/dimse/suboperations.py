"""The C-STORE sub-operations of one C-MOVE or C-GET: counts, reasons, and who they were for.

The counts go into every pending and the final response (PS3.4 C.4.2.1.4); they are also kept
per study, because an operator asks of a study, not of a request, who retrieved it: a
patient-level retrieve of two studies is audited once per study with that study's counts
(gateway/dimse/retrieve.py). Each settled sub-operation is an event on the retrieve's span.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import Span

from gateway.db.engine import Row
from gateway.dimse.tracing import suboperation_event

STATUS_SUCCESS = 0x0000
STATUS_WARNING = 0xB000  # sub-operations complete, one or more failures or warnings
STATUS_NO_SUBOPERATIONS = 0xA702  # out of resources: unable to perform sub-operations


@dataclass(slots=True)
class Counts:
    """Sub-operations of one study (or of the whole retrieve)."""

    matches: int = 0
    completed: int = 0
    failed: int = 0
    warning: int = 0


@dataclass(slots=True)
class Progress:
    """Sub-operation counts of one retrieve, and why the failed ones failed."""

    total: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    study_of: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> study
    studies: dict[str, Counts] = field(default_factory=dict)
    span: Span = field(default_factory=trace.get_current_span)

    @classmethod
    def of(cls, rows: Iterable[Row]) -> Progress:
        """The progress of sending `rows`, in the current (the retrieve's) span."""
        progress = cls(total=0)
        for row in rows:
            study = str(row["study_instance_uid"])
            progress.total += 1
            progress.study_of[str(row["sop_instance_uid"])] = study
            progress.studies.setdefault(study, Counts()).matches += 1
        return progress

    @property
    def remaining(self) -> int:
        return self.total - self.completed - self.failed - self.warning

    def settle(self, sop_uid: str, status: int | None, reason: str = "") -> None:
        """Count one sub-operation: `status` is the C-STORE response's, None if not sent."""
        study = self.studies.get(self.study_of.get(sop_uid, ""), Counts())
        if status == 0x0000:
            self.completed += 1
            study.completed += 1
            reason = ""
        elif status is not None and (status in (0x0001, 0x0111) or 0xB000 <= status <= 0xBFFF):
            self.warning += 1
            study.warning += 1
        else:
            self.failed += 1
            study.failed += 1
            self.failed_uids.append(sop_uid)
            reason = reason or f"0x{status or 0:04X}"
            self.reasons.append(reason)
        suboperation_event(self.span, sop_uid, status, reason)

    def counts(self, *, remaining: bool) -> dict[str, int]:
        elements = {
            "NumberOfCompletedSuboperations": self.completed,
            "NumberOfFailedSuboperations": self.failed,
            "NumberOfWarningSuboperations": self.warning,
        }
        if remaining:
            elements["NumberOfRemainingSuboperations"] = self.remaining
        return elements

    def final_status(self) -> int:
        if self.failed == 0 and self.warning == 0:
            return STATUS_SUCCESS
        if self.completed == 0 and self.warning == 0:
            return STATUS_NO_SUBOPERATIONS
        return STATUS_WARNING
