"""STOW-RS (PS3.18 §10.5): store instances pushed over HTTP through the one ingest path.

Why this shape: every part goes through the one ingest use case, exactly like a C-STORE, so
routing, the outbox and the audit trail treat AI results pushed by a vendor (SEG, SR, SC) the
same as images from a modality, and a pushed SEG reaches the PACS by the same rules. The body is
parsed as a stream (gateway/web/multipart.py) and each part is read once, checked, routed and
spooled as soon as it is complete (`IngestBatch.add`); when the body ends, all parts are made
durable together (`IngestBatch.commit`: their fsyncs side by side, one database transaction)
and only then is the answer sent. A part refused on its own is reported in FailedSOPSequence
without holding back the others.

Answer (PS3.18 Table 10.5.3-1): 200 all stored; 202 some failed or carry warnings; 409 none
stored; 400/413/415 for a request we cannot read at all. The body is a DICOM JSON data set with
ReferencedSOPSequence (each with RetrieveURL, and WarningReason when the sent copy was not the
one kept) and FailedSOPSequence (FailureReason). Free-text reasons go to `Warning: 299` headers.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pydicom
from pydicom.uid import UID
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from gateway.db.instances import IngestOutcome
from gateway.dicom.header import InstanceHeader, read_header
from gateway.dicom.uids import is_valid_uid
from gateway.exceptions import InvalidInputError, SpoolError, StoreError
from gateway.ingest import IngestBatch, Outcome, Source
from gateway.web.errors import WebProblem, problem_handler, warning_value
from gateway.web.guard import principal_of
from gateway.web.media import (
    DICOM,
    DICOM_JSON,
    MULTIPART_RELATED,
    accepts_json,
    parse_accept,
    parse_media_type,
)
from gateway.web.multipart import MultipartError, MultipartLimits, Part, iter_parts, single_part
from gateway.web.urls import base_url, context_of, instance_url, path_uid, study_url

log = logging.getLogger(__name__)

# FailureReason / WarningReason values (PS3.4 Annex GG, PS3.18 §10.5.3)
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
ELEMENTS_DISCARDED = 0xB006

_MAX_WARNING_HEADERS = 20
# Parts per group commit. The answer waits for every group; a request of more parts than this
# is committed in several groups, so memory and transactions stay bounded.
_GROUP_PARTS = 200
_DICOM_ROOT = "1.2.840.10008."


@dataclass(frozen=True, slots=True)
class PartOutcome:
    """What happened to one part: stored (maybe with a warning) or failed, and why."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_uid: str | None
    series_uid: str | None
    failure: int | None = None
    warning: int | None = None
    note: str | None = None


@problem_handler
async def store_instances(request: Request) -> Response:
    """POST /studies and /studies/{study}."""
    context = context_of(request)
    study = path_uid(request, "study") if "study" in request.path_params else None
    try:
        accept = parse_accept(request.headers.get("accept"))
    except InvalidInputError as exc:
        raise WebProblem(400, f"Accept: {exc}") from exc
    if not accepts_json(accept):
        raise WebProblem(406, f"STOW-RS answers {DICOM_JSON}; the Accept header excludes it")
    principal = principal_of(request)
    source = Source(
        door="stowrs",
        actor=principal.subject if principal else None,
        peer=request.client.host if request.client else None,
    )
    outcomes: list[PartOutcome] = []
    entries: list[PartOutcome | _Staged] = []  # of the group being filled
    body_error: MultipartError | None = None
    disconnected = False
    batch = context.ingestor.batch(source)
    try:
        try:
            async for part in _parts(request, context.ingestor.staging_dir, context.settings.http):
                entries.append(await anyio.to_thread.run_sync(_stage_part, batch, part, study))
                if len(entries) >= _GROUP_PARTS:  # bounds memory and transaction size
                    outcomes += await _commit(batch, entries, source)
                    batch, entries = context.ingestor.batch(source), []
        except MultipartError as exc:
            body_error = exc  # the complete parts before it are still stored and reported
        except ClientDisconnect:
            disconnected = True  # as before: what arrived complete is kept
        outcomes += await _commit(batch, entries, source)
    finally:
        if not batch.done:  # an error or cancellation before the commit: nothing is kept
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(batch.abandon, "the request failed")
    if disconnected:
        log.info("STOW-RS client %s went away after %d part(s)", source.peer, len(outcomes))
        return Response(status_code=400)
    if body_error is not None and not any(o.failure is None for o in outcomes):
        raise WebProblem(body_error.status, str(body_error)) from body_error
    return _answer(outcomes, base_url(request), study, str(body_error) if body_error else None)


async def _commit(
    batch: IngestBatch, entries: list[PartOutcome | _Staged], source: Source
) -> list[PartOutcome]:
    """Make a group of parts durable; what the answer says about each."""
    results = await anyio.to_thread.run_sync(batch.commit)
    return [_outcome(entry, results, source) for entry in entries]


async def _parts(request: Request, staging_dir: Path, http: Any) -> Any:
    header = request.headers.get("content-type")
    if not header:
        raise WebProblem(415, f'Content-Type is required: {MULTIPART_RELATED}; type="{DICOM}"')
    try:
        media = parse_media_type(header)
    except InvalidInputError as exc:
        raise WebProblem(415, f"Content-Type: {exc}") from exc
    if media.name == DICOM:
        yield await single_part(request.stream(), staging_dir=staging_dir, content_type=DICOM)
        return
    if media.name != MULTIPART_RELATED:
        raise WebProblem(
            415, f'STOW-RS takes {MULTIPART_RELATED}; type="{DICOM}" (or {DICOM}), not {media.name}'
        )
    root_type = media.params.get("type", DICOM).lower()
    if root_type != DICOM:
        raise WebProblem(
            415,
            f'multipart/related type="{root_type}" is not supported: send Part 10 instances '
            f'with type="{DICOM}"',
        )
    limits = MultipartLimits(max_parts=http.max_parts)
    async for part in iter_parts(
        request.stream(),
        boundary=media.params.get("boundary", ""),
        staging_dir=staging_dir,
        limits=limits,
    ):
        yield part


@dataclass(frozen=True, slots=True)
class _Staged:
    """A part handed to the ingest batch; its outcome is known after the commit."""

    index: int  # in the batch's outcomes
    where: str
    identity: tuple[str | None, str | None, str | None, str | None]


def _stage_part(batch: IngestBatch, part: Part, study: str | None) -> PartOutcome | _Staged:
    """Check one part and add it to the batch (runs in a worker thread); the file is consumed."""
    try:
        return _check_and_add(batch, part, study)
    finally:
        with contextlib.suppress(OSError):
            part.path.unlink(missing_ok=True)


def _check_and_add(batch: IngestBatch, part: Part, study: str | None) -> PartOutcome | _Staged:
    where = f"part {part.index + 1}"
    content_type = part.content_type
    if content_type is not None:
        try:
            media = parse_media_type(content_type).name
        except InvalidInputError:
            media = content_type
        if media != DICOM:
            return PartOutcome(
                None,
                None,
                None,
                None,
                failure=CANNOT_UNDERSTAND,
                note=f"{where}: {media} is not {DICOM}",
            )
    encoding = part.headers.get("content-transfer-encoding", "binary").lower()
    if encoding not in ("binary", "8bit", "7bit"):
        return PartOutcome(
            None,
            None,
            None,
            None,
            failure=CANNOT_UNDERSTAND,
            note=f"{where}: Content-Transfer-Encoding {encoding} is not supported; send binary",
        )
    # The one parse of the part: ingest is handed the header rather than reading it again.
    header: InstanceHeader | None
    try:
        header = read_header(part.path)
    except InvalidInputError:
        header = None  # ingest refuses it (and says why); the answer names what it can
    identity: tuple[str | None, str | None, str | None, str | None]
    if header is not None:
        identity = (
            header.sop_class_uid,
            header.sop_instance_uid,
            header.study_instance_uid,
            header.series_instance_uid,
        )
    else:
        identity = _identity(part.path)
    sop_class, sop, part_study, series = identity
    if study is not None and part_study != study:
        return PartOutcome(
            sop_class,
            sop,
            part_study,
            series,
            failure=DOES_NOT_MATCH,
            note=f"{where}: StudyInstanceUID {part_study} differs from {study} in the URL",
        )
    if sop_class and sop_class.startswith(_DICOM_ROOT) and not _is_storage_class(sop_class):
        return PartOutcome(
            sop_class,
            sop,
            part_study,
            series,
            failure=SOP_CLASS_NOT_SUPPORTED,
            note=f"{where}: SOP class {sop_class} is not a storage SOP class",
        )
    return _Staged(batch.add(part.path, header=header), where, identity)


def _outcome(entry: PartOutcome | _Staged, results: list[Outcome], source: Source) -> PartOutcome:
    """What the answer says about one part, once the batch is committed."""
    if isinstance(entry, PartOutcome):
        return entry
    where = entry.where
    sop_class, sop, part_study, series = entry.identity
    result = results[entry.index]
    if isinstance(result, InvalidInputError):
        return PartOutcome(
            sop_class,
            sop,
            part_study,
            series,
            failure=result.dicom_status,
            note=f"{where}: {result}",
        )
    if isinstance(result, (SpoolError, StoreError)):
        log.error("STOW-RS: could not store %s from %s: %s", where, source.who, result)
        return PartOutcome(
            sop_class,
            sop,
            part_study,
            series,
            failure=OUT_OF_RESOURCES,
            note=f"{where}: gateway storage unavailable, retry later",
        )
    if isinstance(result, Exception):
        log.error(
            "STOW-RS: unexpected error storing %s from %s",
            where,
            source.who,
            exc_info=result,
        )
        return PartOutcome(sop_class, sop, part_study, series, failure=PROCESSING_FAILURE)
    header = result.header
    warning, note = None, None
    if result.outcome is IngestOutcome.IGNORED:
        warning = ELEMENTS_DISCARDED
        note = (
            f"{header.sop_instance_uid} was already stored with other content; the first copy "
            "was kept (ingest.duplicate_policy: ignore)"
        )
    elif result.outcome is IngestOutcome.REPLACED:
        note = f"{header.sop_instance_uid} replaced an earlier copy (ingest.duplicate_policy)"
    return PartOutcome(
        header.sop_class_uid,
        header.sop_instance_uid,
        header.study_instance_uid,
        header.series_instance_uid,
        warning=warning,
        note=note,
    )


def _identity(path: Path) -> tuple[str | None, str | None, str | None, str | None]:
    """SOP class, SOP instance, study and series UIDs if readable (for the answer only)."""
    keywords = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
    try:
        dataset = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=list(keywords), defer_size=1024
        )
    except Exception:  # unreadable: ingest reports why
        return None, None, None, None
    values: list[str | None] = []
    for keyword in keywords:
        try:
            value = str(dataset.get(keyword, "") or "").rstrip("\x00 ")
        except Exception:
            value = ""
        values.append(value if is_valid_uid(value) else None)
    return values[0], values[1], values[2], values[3]


def _is_storage_class(uid: str) -> bool:
    info = UID(uid)
    return info.type == "SOP Class" and "Storage" in info.name


def _answer(
    outcomes: list[PartOutcome], base: str, study: str | None, body_error: str | None
) -> Response:
    stored = [o for o in outcomes if o.failure is None]
    failed = [o for o in outcomes if o.failure is not None]
    document: dict[str, Any] = {}
    studies = {o.study_uid for o in stored if o.study_uid}
    target_study = study or (studies.pop() if len(studies) == 1 else None)
    if target_study:
        document["00081190"] = {"vr": "UR", "Value": [study_url(base, target_study)]}
    if failed:
        document["00081198"] = {"vr": "SQ", "Value": [_failed_item(o) for o in failed]}
    if stored:
        document["00081199"] = {"vr": "SQ", "Value": [_referenced_item(o, base) for o in stored]}
    notes = [o.note for o in outcomes if o.note]
    if body_error:
        notes.insert(0, f"the body was cut off or malformed after the parts listed: {body_error}")
    if not stored:
        status = 409
    elif failed or body_error or any(o.warning is not None for o in stored):
        status = 202
    else:
        status = 200
    headers = [("warning", warning_value(note)) for note in notes[:_MAX_WARNING_HEADERS]]
    response = JSONResponse(document, status_code=status, media_type=DICOM_JSON)
    for name, value in headers:
        response.headers.append(name, value)
    return response


def _referenced_item(outcome: PartOutcome, base: str) -> dict[str, Any]:
    assert outcome.study_uid and outcome.series_uid and outcome.sop_instance_uid
    item: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": [outcome.sop_class_uid]},
        "00081155": {"vr": "UI", "Value": [outcome.sop_instance_uid]},
        "00081190": {
            "vr": "UR",
            "Value": [
                instance_url(base, outcome.study_uid, outcome.series_uid, outcome.sop_instance_uid)
            ],
        },
    }
    if outcome.warning is not None:
        item["00081196"] = {"vr": "US", "Value": [outcome.warning]}
    return item


def _failed_item(outcome: PartOutcome) -> dict[str, Any]:
    item: dict[str, Any] = {}
    item["00081150"] = (
        {"vr": "UI", "Value": [outcome.sop_class_uid]} if outcome.sop_class_uid else {"vr": "UI"}
    )
    item["00081155"] = (
        {"vr": "UI", "Value": [outcome.sop_instance_uid]}
        if outcome.sop_instance_uid
        else {"vr": "UI"}
    )
    item["00081197"] = {"vr": "US", "Value": [outcome.failure]}
    return item
