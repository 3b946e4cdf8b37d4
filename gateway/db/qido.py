"""QIDO-RS searches as SQL over the indexed `instances` columns (never over files).

Why this shape: the gateway keeps one row per instance; studies and series are the groups of
those rows. A search first pages through the *matching* group keys (an indexed WHERE plus
GROUP BY, ordered by first arrival so paging is stable while new studies arrive), then
computes the per-group aggregates (NumberOfStudyRelated*, ModalitiesInStudy) over *all*
visible rows of just that page, so counts describe the whole study, not only the rows that
matched. Values are always bound parameters; column names come from a fixed table, never from
the request. Purged instances (bytes gone, `purged_at` set) are invisible. The DIMSE C-FIND
service (gateway/dimse/query.py) runs the same searches, plus a patient level (groups by
Patient ID) that QIDO-RS does not have.

Matching (PS3.4 C.2.2.2 as profiled by PS3.18 §8.3.4): single value, `*`/`?` wildcards, UID
lists, DA/TM ranges, integer values, and for person names with `fuzzy` a case-insensitive
"every word starts a name component" match on the stored search key (gateway/dicom/names.py).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.db.engine import Database, Row
from gateway.dicom.names import name_words
from gateway.exceptions import InvalidInputError


class Level(enum.StrEnum):
    PATIENT = "patient"  # C-FIND's Patient Root model (groups by Patient ID); not in QIDO-RS
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


class Kind(enum.Enum):
    UID = "uid"
    DATE = "date"
    TIME = "time"
    NAME = "name"
    TEXT = "text"
    CODE = "code"  # CS: single value, wildcard or a list of values
    INTEGER = "integer"
    MODALITIES = "modalities"


@dataclass(frozen=True, slots=True)
class Attribute:
    column: str
    kind: Kind


# keyword -> how it is matched. Only these are matched; the web layer warns about the rest.
MATCHABLE: dict[str, Attribute] = {
    "StudyInstanceUID": Attribute("study_instance_uid", Kind.UID),
    "SeriesInstanceUID": Attribute("series_instance_uid", Kind.UID),
    "SOPInstanceUID": Attribute("sop_instance_uid", Kind.UID),
    "SOPClassUID": Attribute("sop_class_uid", Kind.UID),
    "StudyDate": Attribute("study_date", Kind.DATE),
    "StudyTime": Attribute("study_time", Kind.TIME),
    "PatientBirthDate": Attribute("patient_birth_date", Kind.DATE),
    "PerformedProcedureStepStartDate": Attribute("performed_procedure_step_start_date", Kind.DATE),
    "PerformedProcedureStepStartTime": Attribute("performed_procedure_step_start_time", Kind.TIME),
    "PatientName": Attribute("patient_name", Kind.NAME),
    "ReferringPhysicianName": Attribute("referring_physician_name", Kind.NAME),
    "PatientID": Attribute("patient_id", Kind.TEXT),
    "AccessionNumber": Attribute("accession_number", Kind.TEXT),
    "StudyID": Attribute("study_id", Kind.TEXT),
    "StudyDescription": Attribute("study_description", Kind.TEXT),
    "SeriesDescription": Attribute("series_description", Kind.TEXT),
    "PatientSex": Attribute("patient_sex", Kind.CODE),
    "Modality": Attribute("modality", Kind.CODE),
    "ModalitiesInStudy": Attribute("modality", Kind.MODALITIES),
    "SeriesNumber": Attribute("series_number", Kind.INTEGER),
    "InstanceNumber": Attribute("instance_number", Kind.INTEGER),
    "Rows": Attribute("rows", Kind.INTEGER),
    "Columns": Attribute("columns", Kind.INTEGER),
    "BitsAllocated": Attribute("bits_allocated", Kind.INTEGER),
    "NumberOfFrames": Attribute("number_of_frames", Kind.INTEGER),
}

_GROUP_KEY = {
    Level.PATIENT: "patient_id",
    Level.STUDY: "study_instance_uid",
    Level.SERIES: "series_instance_uid",
    Level.INSTANCE: "sop_instance_uid",
}
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_LIST_SPLIT = re.compile(r"[,\\]")
_UID_GRAMMAR = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_VISIBLE = "purged_at IS NULL"
_WILDCARD_KINDS = frozenset({Kind.NAME, Kind.TEXT, Kind.CODE, Kind.MODALITIES})


@dataclass(frozen=True, slots=True)
class Match:
    keyword: str
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Search:
    level: Level
    matches: Sequence[Match] = ()
    fuzzy: bool = False
    limit: int = 100
    offset: int = 0


@dataclass(slots=True)
class Hit:
    """One result: the group's first received visible row plus the group's aggregates.

    The first row is usually the modality's own image, whose study and series attributes are
    the fullest; derived objects (SEG, SR) arriving later often carry fewer.
    """

    row: Row
    instances: int = 0
    series: int = 0
    studies: int = 0  # at patient level only
    modalities: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SearchResult:
    hits: list[Hit]
    more: bool  # results beyond this page exist


def search(db: Database, query: Search) -> SearchResult:
    """Run one QIDO-RS search; raise InvalidInputError for a value that cannot be matched."""
    where, params = where_clause(query.matches, fuzzy=query.fuzzy, dialect=db.dialect)
    key = _GROUP_KEY[query.level]
    if query.level is Level.PATIENT:
        where += " AND patient_id IS NOT NULL"  # no unique key, no patient to answer
    studies = (
        ", COUNT(DISTINCT study_instance_uid) AS studies" if query.level is Level.PATIENT else ""
    )
    with db.transaction(write=False) as cur:
        if query.level is Level.INSTANCE:
            rows = cur.execute(
                f"SELECT * FROM instances WHERE {where} "
                "ORDER BY study_instance_uid, series_instance_uid, "
                "COALESCE(instance_number, 0), id LIMIT ? OFFSET ?",
                (*params, query.limit + 1, query.offset),
            ).fetchall()
            return SearchResult([Hit(row) for row in rows[: query.limit]], len(rows) > query.limit)
        page = cur.execute(
            f"SELECT {key} AS group_key, MIN(id) AS first_id FROM instances WHERE {where} "
            f"GROUP BY {key} ORDER BY MIN(id) LIMIT ? OFFSET ?",
            (*params, query.limit + 1, query.offset),
        ).fetchall()
        more = len(page) > query.limit
        page = page[: query.limit]
        if not page:
            return SearchResult([], more)
        keys = [str(row["group_key"]) for row in page]
        marks = ", ".join("?" for _ in keys)
        first = {
            str(row[key]): row
            for row in cur.execute(
                f"SELECT * FROM instances WHERE id IN ({marks})",
                [int(row["first_id"]) for row in page],
            ).fetchall()
        }
        counts = {
            str(row["group_key"]): row
            for row in cur.execute(
                f"SELECT {key} AS group_key, COUNT(*) AS instances, "
                f"COUNT(DISTINCT series_instance_uid) AS series{studies} FROM instances "
                f"WHERE {_VISIBLE} AND {key} IN ({marks}) GROUP BY {key}",
                keys,
            ).fetchall()
        }
        modalities: dict[str, list[str]] = {k: [] for k in keys}
        if query.level is Level.STUDY:
            for row in cur.execute(
                f"SELECT DISTINCT study_instance_uid, modality FROM instances "
                f"WHERE {_VISIBLE} AND modality IS NOT NULL AND study_instance_uid IN ({marks}) "
                "ORDER BY modality",
                keys,
            ).fetchall():
                modalities[str(row["study_instance_uid"])].append(str(row["modality"]))
    hits = []
    for group in keys:
        aggregate = counts.get(group, {})
        hits.append(
            Hit(
                first[group],
                instances=int(aggregate.get("instances", 0)),
                series=int(aggregate.get("series", 0)),
                studies=int(aggregate.get("studies", 0)),
                modalities=modalities[group],
            )
        )
    return SearchResult(hits, more)


def where_clause(
    matches: Sequence[Match], *, fuzzy: bool, dialect: str
) -> tuple[str, list[object]]:
    """The WHERE condition (always excluding purged rows) and its parameters."""
    clauses = [_VISIBLE]
    params: list[object] = []
    for match in matches:
        attribute = MATCHABLE.get(match.keyword)
        if attribute is None:
            raise InvalidInputError(f"{match.keyword} is not a matching key")
        value = match.value
        if value == "" and attribute.kind is not Kind.INTEGER:
            continue  # universal match (an empty key only asks for the attribute back)
        if value == "*" and attribute.kind in _WILDCARD_KINDS:
            continue
        sql, values = _condition(match.keyword, attribute, value, fuzzy=fuzzy, dialect=dialect)
        clauses.append(sql)
        params.extend(values)
    return " AND ".join(clauses), params


def _condition(
    keyword: str, attribute: Attribute, value: str, *, fuzzy: bool, dialect: str
) -> tuple[str, list[object]]:
    column, kind = attribute.column, attribute.kind
    if kind is Kind.UID:
        uids = [item.strip() for item in _LIST_SPLIT.split(value) if item.strip()]
        # Grammar only: an over-long UID is well-formed enough to simply match nothing.
        bad = [uid for uid in uids if not _UID_GRAMMAR.fullmatch(uid)]
        if bad or not uids:
            raise InvalidInputError(f"{keyword}={value[:80]!r}: give UIDs separated by commas")
        return f"{column} IN ({', '.join('?' for _ in uids)})", list(uids)
    if kind is Kind.DATE:
        return _range(keyword, column, value, _DATE, pad_low="", pad_high="")
    if kind is Kind.TIME:
        return _range(keyword, column, value, _TIME, pad_low="", pad_high="~")
    if kind is Kind.INTEGER:
        try:
            number = int(value)
        except ValueError as exc:
            raise InvalidInputError(f"{keyword}={value[:80]!r} is not an integer") from exc
        if not -(2**31) <= number < 2**31:
            raise InvalidInputError(f"{keyword}={value[:80]!r} is out of range for IS")
        return f"{column} = ?", [number]
    if kind is Kind.MODALITIES:
        codes = [item.strip() for item in _LIST_SPLIT.split(value) if item.strip()]
        marks = ", ".join("?" for _ in codes)
        return (
            f"study_instance_uid IN (SELECT study_instance_uid FROM instances "
            f"WHERE {_VISIBLE} AND modality IN ({marks}))",
            list(codes),
        )
    if kind is Kind.CODE and ("\\" in value or "," in value):
        codes = [item.strip() for item in _LIST_SPLIT.split(value) if item.strip()]
        return f"{column} IN ({', '.join('?' for _ in codes)})", list(codes)
    if kind is Kind.NAME and fuzzy:
        return _fuzzy(f"{column}_search", value)
    if kind is Kind.NAME and "=" not in value:
        # A name without '=' names the alphabetic group: "Yamada^Tarou" also matches
        # "Yamada^Tarou=山田^太郎=やまだ^たろう".
        whole, whole_params = _text(column, value, dialect=dialect)
        group, group_params = _text(column, value + "=*", dialect=dialect)
        return f"({whole} OR {group})", [*whole_params, *group_params]
    return _text(column, value, dialect=dialect)


def _range(
    keyword: str, column: str, value: str, grammar: re.Pattern[str], *, pad_low: str, pad_high: str
) -> tuple[str, list[object]]:
    if "-" not in value:
        if not grammar.fullmatch(value):
            raise InvalidInputError(f"{keyword}={value[:80]!r} is not a valid DICOM value")
        if pad_high:  # a partial time matches every time that starts with it
            return f"{column} >= ? AND {column} < ?", [value, value + pad_high]
        return f"{column} = ?", [value]
    low, _, high = value.partition("-")
    if (
        (low and not grammar.fullmatch(low))
        or (high and not grammar.fullmatch(high))
        or not (low or high)
    ):
        raise InvalidInputError(f"{keyword}={value[:80]!r} is not a valid range (A-B, -B, A-)")
    clauses: list[str] = []
    params: list[object] = []
    if low:
        clauses.append(f"{column} >= ?")
        params.append(low + pad_low)
    if high:
        # "-1100" includes 11:00:59.9; '~' sorts after every digit and '.'.
        clauses.append(f"{column} <= ?" if not pad_high else f"{column} < ?")
        params.append(high + pad_high)
    return " AND ".join(clauses), params


def _text(column: str, value: str, *, dialect: str) -> tuple[str, list[object]]:
    if "*" not in value and "?" not in value:
        return f"{column} = ?", [value]
    if dialect == "sqlite":
        # GLOB is case-sensitive like DICOM matching; '[' is its only other metacharacter.
        return f"{column} GLOB ?", [value.replace("[", "[[]")]
    return f"{column} LIKE ? ESCAPE '\\'", [_like(value)]


def _fuzzy(column: str, value: str) -> tuple[str, list[object]]:
    words = name_words(value)
    if not words:
        return "1 = 1", []
    clauses = [f"{column} LIKE ? ESCAPE '\\'" for _ in words]
    return " AND ".join(clauses), [f"% {_like(word)}%" for word in words]


def _like(pattern: str) -> str:
    """DICOM wildcards to a LIKE pattern with '\\' escaping the LIKE metacharacters."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")
