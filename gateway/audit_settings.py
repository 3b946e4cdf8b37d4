"""The `audit` section: how long audit events stay in the database and where they go next.

```yaml
audit:
  retention_days: 2555          # absent: keep every event forever (the default)
  archive_dir: ./data/audit     # JSON Lines files, written and fsynced before rows are deleted
  archive_period: month         # one file per month (or day)
  batch_size: 1000              # events moved per transaction
```

Deleting audit events without a copy must be said out loud (`archive: false`); a retention
period without an archive folder is refused, because a forgotten key would otherwise destroy
records a hospital is obliged to keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.config_values import flag as _flag
from gateway.config_values import mapping as _mapping
from gateway.config_values import no_unknown as _no_unknown
from gateway.config_values import number as _number
from gateway.config_values import optional_text as _optional_text
from gateway.config_values import resolve_path as _resolve
from gateway.exceptions import ConfigError

ArchivePeriod = Literal["day", "month"]
MAX_BATCH = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditSettings:
    retention_days: float | None = None  # None: keep forever
    archive_dir: Path | None = None  # None: only with archive=False (or no retention)
    archive: bool = True  # False: expired events are deleted without a copy
    archive_period: ArchivePeriod = "month"
    batch_size: int = 1000


def parse_audit(raw: object, base_dir: Path) -> AuditSettings:
    """Validate the `audit` section; refuse a retention that would delete without a copy."""
    audit = _mapping(raw, "audit")
    _no_unknown(
        audit,
        "audit",
        {"retention_days", "archive_dir", "archive", "archive_period", "batch_size"},
    )
    retention = (
        None
        if audit.get("retention_days") is None
        else _number(audit, "audit", "retention_days", None, minimum=1)
    )
    folder = _optional_text(audit, "audit", "archive_dir")
    archive = _flag(audit, "audit", "archive", True)
    period = audit.get("archive_period", "month")
    if period not in ("day", "month"):
        raise ConfigError(f"audit.archive_period is {period!r}; use day or month")
    if not archive and folder is not None:
        raise ConfigError(
            "audit.archive is false but audit.archive_dir is set; remove archive_dir to delete "
            "expired events without a copy, or remove `archive: false` to archive them"
        )
    if retention is not None and archive and folder is None:
        raise ConfigError(
            "audit.retention_days is set but audit.archive_dir is not: set audit.archive_dir "
            "to a folder on durable storage for the JSON Lines archive, or set "
            "audit.archive: false if expired audit events are to be deleted without a copy"
        )
    return AuditSettings(
        retention_days=retention,
        archive_dir=None if folder is None else _resolve(folder, base_dir),
        archive=archive,
        archive_period=period,
        batch_size=int(_number(audit, "audit", "batch_size", 1000, minimum=1, maximum=MAX_BATCH)),
    )
