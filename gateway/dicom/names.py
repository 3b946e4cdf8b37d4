"""Person name keys for fuzzy matching (QIDO-RS `fuzzymatching=true`).

Why a stored key: a person name arrives in many encodings and up to three component groups
(`Yamada^Tarou=山田^太郎=やまだ^たろう`). Fuzzy matching here means "every word of the query
starts a name component, ignoring case", which SQL can answer with `LIKE '% WORD%'` on a
normalised copy of the name, the same way on SQLite and PostgreSQL, for any script. The key is
computed in Python (Unicode-aware upper-casing) once at ingest, not per query.
"""

from __future__ import annotations

import re

_SEPARATORS = re.compile(r"[\^=\s]+")


def name_words(value: str) -> list[str]:
    """The upper-cased words of a person name or query, across every component group."""
    return [word.upper() for word in _SEPARATORS.split(value) if word]


def person_name_key(value: str | None) -> str | None:
    """`' DOE JOHN '`: the name's words, upper-cased, each preceded and followed by a space."""
    if not value:
        return None
    words = name_words(value)
    return f" {' '.join(words)} " if words else None
