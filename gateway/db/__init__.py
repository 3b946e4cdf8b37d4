"""Gateway state: instances, routing decisions, the delivery queue and the audit trail."""

from __future__ import annotations

from gateway.db.engine import Database, open_database

__all__ = ["Database", "open_database"]
