"""Log lines for people (`text`) or for log pipelines (`json`), tied to traces either way.

`logging.format: json` writes one JSON object per line: `ts`, `level`, `logger`, `message`,
`trace_id` and `span_id` of the span that was current when the line was written (so a log
search and a trace view can jump to each other), plus any structured fields a caller passed
with `extra={"fields": {...}}` (e.g. `event`, `dicom.sop_instance_uid`, `gateway.destination`).

PHI: the gateway logs UIDs, AE titles, addresses, statuses and counts, never patient data.
Structured fields whose name is a patient-identifying DICOM keyword (PatientName, PatientID,
AccessionNumber, ...) are dropped unless `logging.phi: true`, and callers that could add such a
field (ingest) check `settings.logging.phi` first. Free-text messages never quote header values.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace

from gateway.telemetry_config import LoggingSettings

PHI_FIELDS = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "PatientAddress",
        "OtherPatientIDs",
        "AccessionNumber",
        "ReferringPhysicianName",
        "InstitutionName",
        "StudyDescription",
        "SeriesDescription",
    }
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(trace_suffix)s"


def configure_logging(settings: LoggingSettings, *, level: int | str = logging.INFO) -> None:
    """Replace the root logger's handlers with one stderr handler in the configured format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceContextFilter())
    if settings.format == "json":
        handler.setFormatter(JsonFormatter(phi=settings.phi))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)


class TraceContextFilter(logging.Filter):
    """Stamps the current span's ids on each record (runs in the thread that logs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        stamp: dict[str, str | None] = {"trace_id": None, "span_id": None, "trace_suffix": ""}
        if context.is_valid:
            trace_id = format(context.trace_id, "032x")
            span_id = format(context.span_id, "016x")
            stamp = {
                "trace_id": trace_id,
                "span_id": span_id,
                "trace_suffix": f" [trace {trace_id} span {span_id}]",
            }
        record.__dict__.update(stamp)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record; see the module docstring for the fields."""

    def __init__(self, *, phi: bool = False) -> None:
        super().__init__()
        self._phi = phi

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", None)
        if trace_id:
            document["trace_id"] = trace_id
            document["span_id"] = getattr(record, "span_id", None)
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                if not self._phi and str(key) in PHI_FIELDS:
                    continue
                document.setdefault(str(key), _jsonable(value))
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(item) for item in value]
    return str(value)
