"""C-FIND SCP: Patient Root and Study Root Query/Retrieve Information Model FIND (PS3.4 C.4.1).

A request is read into a search (gateway/dimse/identifiers.py), run by the QIDO-RS matcher
(gateway/db/qido.py), and answered with one pending response per match (0xFF00, or 0xFF01 when
a key with a value could not be matched), then Success. At most `dimse.max_find_results`
matches are answered: when there are more, the first ones are sent and the final status is
0xA700 (out of resources) with an Error Comment asking to narrow the query, so a universal
query can neither flood the peer nor look complete when it is not. A C-CANCEL between two
matches ends the answer with 0xFE00. Every query is audited (`dimse.c_find`) and logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from gateway.config import Settings
from gateway.db import Database
from gateway.db.qido import Search, SearchResult, search
from gateway.dimse.answers import response_identifier
from gateway.dimse.association import Association
from gateway.dimse.channel import C_FIND_RQ, MessageChannel, Request
from gateway.dimse.commands import STATUS_OUT_OF_RESOURCES, STATUS_UNRECOGNISED_OPERATION
from gateway.dimse.identifiers import (
    MODEL_OF,
    PATIENT_ROOT_FIND,
    STATUS_IDENTIFIER_MISMATCH,
    STATUS_UNABLE_TO_PROCESS,
    STUDY_ROOT_FIND,
    FindQuery,
    IdentifierError,
    parse_find,
    read_identifier,
)
from gateway.dimse.tracing import describe_find
from gateway.exceptions import InvalidInputError, SpoolError, StoreError
from gateway.headers import with_headers
from gateway.spool import Spool

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_PENDING = 0xFF00
STATUS_PENDING_WARNING = 0xFF01  # optional keys not supported for matching
STATUS_CANCEL = 0xFE00


class FindService:
    """Answers C-FIND on both information models; a `MessageService` (handlers.py)."""

    sop_classes = frozenset({PATIENT_ROOT_FIND, STUDY_ROOT_FIND})

    def __init__(
        self, settings: Settings, db: Database, spool: Spool, audit: Callable[..., None]
    ) -> None:
        self._ae_title = settings.node.ae_title
        self._limit = settings.dimse.max_find_results
        self._db = db
        self._spool = spool
        self._audit = audit

    def serve(self, association: Association, channel: MessageChannel, request: Request) -> None:
        if request.command_field != C_FIND_RQ:
            channel.respond(
                request, STATUS_UNRECOGNISED_OPERATION, ErrorComment="only C-FIND on this context"
            )
            return
        model = MODEL_OF[request.context.abstract_syntax]
        started = time.monotonic()
        record: dict[str, Any] = {"model": model.value, "matches": 0}
        status = STATUS_UNABLE_TO_PROCESS  # what handlers.py answers if we raise
        try:
            try:
                query = parse_find(read_identifier(request), model)
            except IdentifierError as exc:
                status = exc.status
                record["reason"] = exc.comment
                channel.respond(request, status, None, **exc.response_elements())
                return
            record.update(level=query.level.name, query=dict(query.query))
            try:
                result = self._search(query)
            except InvalidInputError as exc:
                status = STATUS_IDENTIFIER_MISMATCH
                record["reason"] = str(exc)
                channel.respond(request, status, ErrorComment=str(exc))
                return
            except (StoreError, SpoolError) as exc:
                log.error("C-FIND: the database is unavailable: %s", exc)
                status = STATUS_OUT_OF_RESOURCES
                record["reason"] = str(exc)
                channel.respond(request, status, ErrorComment="gateway database unavailable")
                return
            status = self._answer(channel, request, query, result, record)
        finally:
            self._record(association, status, record, time.monotonic() - started)

    def _search(self, query: FindQuery) -> SearchResult:
        result = search(
            self._db, Search(level=query.search_level, matches=query.matches, limit=self._limit)
        )
        # Returned values come from each hit's header, made on first read (gateway/headers.py).
        with_headers(self._db, self._spool, [hit.row for hit in result.hits])
        return result

    def _answer(
        self,
        channel: MessageChannel,
        request: Request,
        query: FindQuery,
        result: SearchResult,
        record: dict[str, Any],
    ) -> int:
        pending = STATUS_PENDING_WARNING if query.unsupported else STATUS_PENDING
        if query.unsupported:
            record["not_matched"] = list(query.unsupported)
        for hit in result.hits:
            if channel.cancelled(request.message_id):
                channel.respond(request, STATUS_CANCEL)
                return STATUS_CANCEL
            channel.respond(
                request, pending, response_identifier(query, hit, ae_title=self._ae_title)
            )
            record["matches"] += 1
        if channel.cancelled(request.message_id):
            channel.respond(request, STATUS_CANCEL)
            return STATUS_CANCEL
        if result.more:
            record["truncated"] = True
            channel.respond(
                request,
                STATUS_OUT_OF_RESOURCES,
                ErrorComment=f"over {self._limit} matches, first {self._limit} sent; narrow it",
            )
            return STATUS_OUT_OF_RESOURCES
        channel.respond(request, STATUS_SUCCESS)
        return STATUS_SUCCESS

    def _record(
        self, association: Association, status: int, record: dict[str, Any], seconds: float
    ) -> None:
        record["status"] = f"0x{status:04X}"
        record["peer"] = association.peer
        record["seconds"] = round(seconds, 3)
        describe_find(record, status)
        log.info(
            "C-FIND from %s@%s: %s %s level, keys %s, %d match(es), status 0x%04X",
            association.calling_ae,
            association.peer,
            record.get("model"),
            record.get("level", "?"),
            ",".join(sorted(record.get("query", {}))) or "-",
            record["matches"],
            status,
        )
        outcome = (
            "success"
            if status == STATUS_SUCCESS
            else "cancelled"
            if status == STATUS_CANCEL
            else "failed"
        )
        try:
            self._audit(
                "dimse.c_find",
                outcome=outcome,
                actor=association.calling_ae or None,
                detail=record,
            )
        except Exception:
            log.exception("could not write audit event dimse.c_find")
