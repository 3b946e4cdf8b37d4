"""QIDO-RS (PS3.18 §10.6): search studies, series and instances at every resource level.

Why split from gateway/db/qido.py: this module owns the HTTP side (query parameters,
`includefield`, paging headers, DICOM JSON results) and the database module owns matching.
Result values come from each group's first stored header (already DICOM JSON, so every
character set arrives as proper Unicode), plus the computed attributes the standard requires.
"""

from __future__ import annotations

import re

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.db.qido import MATCHABLE, Hit, Level, Match, Search, SearchResult, search
from gateway.exceptions import InvalidInputError
from gateway.headers import with_headers
from gateway.web import dicomjson
from gateway.web.dicomjson import Document, element
from gateway.web.errors import WebProblem, problem_handler, warning_value
from gateway.web.media import DICOM_JSON, accepts_json, parse_accept
from gateway.web.urls import (
    base_url,
    context_of,
    instance_url,
    path_uid,
    series_url,
    study_url,
)

_NAME = r"([0-9A-Fa-f]{8}|[A-Za-z][A-Za-z0-9]{0,63})"
_FIELD = re.compile(rf"all|{_NAME}(\.{_NAME})*")
_DEFAULT_LIMIT = 100

STUDY_KEYS = (
    "SpecificCharacterSet",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "TimezoneOffsetFromUTC",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDescription",
)
SERIES_KEYS = (
    "SpecificCharacterSet",
    "Modality",
    "TimezoneOffsetFromUTC",
    "SeriesDescription",
    "SeriesInstanceUID",
    "SeriesNumber",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
    "StudyInstanceUID",
)
INSTANCE_KEYS = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "TimezoneOffsetFromUTC",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
    "StudyInstanceUID",
    "SeriesInstanceUID",
)
# `includefield=all` at study/series level: the patient, study, series and equipment modules.
STUDY_ALL = (
    *STUDY_KEYS,
    "IssuerOfPatientID",
    "OtherPatientIDsSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "EthnicGroup",
    "PatientComments",
    "IssuerOfAccessionNumberSequence",
    "ProcedureCodeSequence",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "AdmittingDiagnosesDescription",
    "AdditionalPatientHistory",
    "InstitutionName",
)
SERIES_ALL = (
    *SERIES_KEYS,
    "SeriesDate",
    "SeriesTime",
    "Laterality",
    "ProtocolName",
    "OperatorsName",
    "PerformingPhysicianName",
    "BodyPartExamined",
    "PatientPosition",
    "PerformedProcedureStepID",
    "PerformedProcedureStepDescription",
    "FrameOfReferenceUID",
    "Manufacturer",
    "ManufacturerModelName",
    "StationName",
    "SoftwareVersions",
)


@problem_handler
async def search_for_studies(request: Request) -> Response:
    """GET /studies"""
    return await _search(request, Level.STUDY, {})


@problem_handler
async def search_for_series(request: Request) -> Response:
    """GET /series and /studies/{study}/series"""
    scope = {}
    if "study" in request.path_params:
        scope["StudyInstanceUID"] = path_uid(request, "study")
    return await _search(request, Level.SERIES, scope)


@problem_handler
async def search_for_instances(request: Request) -> Response:
    """GET /instances, /studies/{study}/instances, /studies/{study}/series/{series}/instances"""
    scope = {}
    if "study" in request.path_params:
        scope["StudyInstanceUID"] = path_uid(request, "study")
    if "series" in request.path_params:
        scope["SeriesInstanceUID"] = path_uid(request, "series")
    return await _search(request, Level.INSTANCE, scope)


async def _search(request: Request, level: Level, scope: dict[str, str]) -> Response:
    context = context_of(request)
    try:
        accept = parse_accept(request.headers.get("accept"))
    except InvalidInputError as exc:
        raise WebProblem(400, f"Accept: {exc}") from exc
    if not accepts_json(accept):
        raise WebProblem(406, f"QIDO-RS answers {DICOM_JSON} only")
    query, include, ignored = _parse(request, level, scope, context.settings.http.max_results)

    def search_with_headers() -> SearchResult:
        result = search(context.db, query)
        # Result values come from each hit's header, made on first read (gateway/headers.py).
        with_headers(context.db, context.spool, [hit.row for hit in result.hits])
        return result

    try:
        result = await anyio.to_thread.run_sync(search_with_headers)
    except InvalidInputError as exc:
        raise WebProblem(400, str(exc)) from exc
    base = base_url(request)
    body = [
        _result(hit, level, include, base, scoped_study="StudyInstanceUID" in scope)
        for hit in result.hits
    ]
    response = JSONResponse(body, media_type=DICOM_JSON)
    if ignored:
        response.headers.append(
            "warning",
            warning_value(
                "The following attributes are not supported for matching and were ignored: "
                + ", ".join(sorted(ignored))
            ),
        )
    if result.more:
        response.headers.append(
            "warning", warning_value("There are additional results that can be requested")
        )
    return response


def _parse(
    request: Request, level: Level, scope: dict[str, str], max_results: int
) -> tuple[Search, set[str] | None, set[str]]:
    """(search, includefield tags or None for `all`, keys ignored for matching or unknown)."""
    params = request.query_params
    matches = [Match(keyword, value) for keyword, value in scope.items()]
    include: set[str] | None = set()
    ignored: set[str] = set()
    unknown: set[str] = set()
    limit, offset, fuzzy = _DEFAULT_LIMIT, 0, False
    seen: set[str] = set()
    for key, value in params.multi_items():
        if key == "limit":
            limit = _integer(key, value, minimum=1)
        elif key == "offset":
            offset = _integer(key, value, minimum=0)
        elif key == "fuzzymatching":
            if value not in ("true", "false"):
                raise WebProblem(400, "fuzzymatching must be true or false")
            fuzzy = value == "true"
        elif key == "includefield":
            for name in (n.strip() for n in value.split(",")):
                if not _FIELD.fullmatch(name):
                    raise WebProblem(400, f"includefield {name[:64]!r} is not a keyword or tag")
                if name == "all":
                    include = None
                elif include is not None:
                    try:
                        include.add(dicomjson.tag_of(name.split(".")[0]))
                    except InvalidInputError:
                        unknown.add(name[:64])  # a client's private keyword must not fail it
        else:
            keyword = _matching_keyword(key)
            if keyword in seen:
                raise WebProblem(400, f"{key} is given twice; give one value (or a UID list)")
            seen.add(keyword)
            if keyword in MATCHABLE:
                matches.append(Match(keyword, value))
            else:
                ignored.add(keyword)
                if include is not None:
                    include.add(dicomjson.tag_of(keyword.split(".")[0]))
    search_query = Search(
        level=level,
        matches=matches,
        fuzzy=fuzzy,
        limit=min(limit, max_results),
        offset=offset,
    )
    if unknown:
        ignored.add("includefield " + ", ".join(sorted(unknown)))
    return search_query, include, ignored


def _integer(key: str, value: str, *, minimum: int) -> int:
    if not value.isdigit() or len(value) > 9 or int(value) < minimum:
        raise WebProblem(400, f"{key} must be an integer of at least {minimum}")
    return int(value)


def _matching_keyword(key: str) -> str:
    """The keyword a matching parameter names (`00100010` and `PatientName` alike)."""
    try:
        parts = [dicomjson.keyword_of(dicomjson.tag_of(part)) for part in key.split(".")]
    except InvalidInputError as exc:
        raise WebProblem(400, f"unknown query parameter {key[:64]!r}: {exc}") from exc
    return ".".join(parts)


def _result(
    hit: Hit, level: Level, include: set[str] | None, base: str, *, scoped_study: bool
) -> Document:
    row = hit.row
    study, series, sop = (
        str(row["study_instance_uid"]),
        str(row["series_instance_uid"]),
        str(row["sop_instance_uid"]),
    )
    try:
        header = dicomjson.load(str(row["header_json"]))
    except ValueError:
        header = {}
    if level is Level.INSTANCE:
        header = dicomjson.rewrite_bulk(header, instance_url(base, study, series, sop))
        keys: tuple[str, ...] = (
            INSTANCE_KEYS if scoped_study else (*STUDY_KEYS, *SERIES_KEYS, *INSTANCE_KEYS)
        )
    elif level is Level.SERIES:
        keys = SERIES_KEYS if scoped_study else (*STUDY_KEYS, *SERIES_KEYS)
    else:
        keys = STUDY_KEYS
    wanted = {dicomjson.tag_of(keyword) for keyword in keys}
    if include is None:
        if level is Level.INSTANCE:
            wanted |= set(header)
        else:
            all_keys = STUDY_ALL if level is Level.STUDY else (*STUDY_ALL, *SERIES_ALL)
            wanted |= {dicomjson.tag_of(keyword) for keyword in all_keys}
        include = set()
    else:
        wanted |= include
    document: Document = {tag: header[tag] for tag in wanted if tag in header}
    document["0020000D"] = element("UI", study)
    document["00080056"] = element("CS", "ONLINE")
    if level is Level.STUDY:
        document["00081190"] = element("UR", study_url(base, study))
        document["00080061"] = element("CS", *hit.modalities)
        document["00201206"] = element("IS", hit.series)
        document["00201208"] = element("IS", hit.instances)
    elif level is Level.SERIES:
        document["0020000E"] = element("UI", series)
        document["00081190"] = element("UR", series_url(base, study, series))
        document["00201209"] = element("IS", hit.instances)
    else:
        document["0020000E"] = element("UI", series)
        document["00080018"] = element("UI", sop)
        document["00080016"] = element("UI", str(row["sop_class_uid"]))
        document["00081190"] = element("UR", instance_url(base, study, series, sop))
    for tag in include - set(document):  # asked for by name but absent: zero length
        if tag != dicomjson.PIXEL_DATA and not tag.startswith("0002"):
            document[tag] = element(dicomjson.vr_of(tag))
    return dict(sorted(document.items()))
