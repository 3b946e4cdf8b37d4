"""The PS3.15 Annex E action table: what the Basic profile does to each attribute.

Why from a library: Table E.1-1 has about 650 rows and changes with each edition of the
standard. dicom-anonymizer (KitwareMedical, BSD) ships it per edition as data, grouped by
action code; we read it through its public selector and apply our own actions
(gateway/transform/deidentify.py), because its action functions make random UIDs held in a
process-global dictionary: not stable across batches, restarts or replicas.

Action codes (PS3.15 E.1.1): D replace with a dummy value, Z replace with a zero-length value,
X remove, K keep, U replace a UID consistently; combinations such as X/Z leave the choice to
what the IOD requires (see `choose`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cache

from dicomanonymizer.dicomfields_selector import (  # type: ignore[import-untyped]
    dicom_anonymization_database_selector,
)

EDITION = "dicomfields_2026c"
"""The edition of Table E.1-1 in use (dicom-anonymizer's module name)."""


class Action(enum.Enum):
    """What is done to one attribute (after `choose` resolved a combined code)."""

    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    REPLACE_UID = "U"
    CLEAN_SEQUENCE = "U*"  # keep a sequence, apply the table to its items (UIDs remapped)


_CODES = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}


def choose(code: str) -> Action:
    """One action for a table code, without knowing the IOD or the attribute's type.

    A combined code allows removal only when the IOD does not require the attribute. Without
    per-IOD tables we keep it: with a dummy value when D is allowed (a Type 1 attribute stays
    valid), else with an empty value (a Type 2 attribute stays present). A dummy or empty value
    tells the recipient nothing, so privacy is the same as removal.
    """
    options = code.split("/")
    if "U*" in options:
        return Action.CLEAN_SEQUENCE
    if "U" in options:
        return Action.REPLACE_UID
    if "D" in options:
        return Action.DUMMY
    if "Z" in options:
        return Action.EMPTY
    return Action.REMOVE


@dataclass(frozen=True, slots=True)
class Table:
    """Exact tags and masked ranges (curves 50xx, overlays 60xx) with their actions."""

    exact: dict[int, tuple[str, Action]]
    masked: tuple[tuple[int, int, int, int, str, Action], ...]  # group, element, masks

    def lookup(self, tag: int) -> tuple[str, Action] | None:
        """(table code, action) for `tag`, or None if the table does not list it (kept)."""
        found = self.exact.get(tag)
        if found is not None:
            return found
        group, element = tag >> 16, tag & 0xFFFF
        for g, e, g_mask, e_mask, code, action in self.masked:
            if group & g_mask == g and element & e_mask == e:
                return code, action
        return None


@cache
def basic_profile() -> Table:
    """Table E.1-1 of `EDITION` (read once)."""
    database = dicom_anonymization_database_selector(EDITION)
    exact: dict[int, tuple[str, Action]] = {}
    masked: list[tuple[int, int, int, int, str, Action]] = []
    for category, code in _CODES.items():
        for entry in database[category]:
            if len(entry) == 2:
                exact[entry[0] << 16 | entry[1]] = (code, choose(code))
            else:
                group, element, group_mask, element_mask = entry
                masked.append((group, element, group_mask, element_mask, code, choose(code)))
    return Table(exact=exact, masked=tuple(masked))
