"""Media types on the wire: Content-Type parsing and Accept negotiation for DICOMweb.

Why hand-written: DICOMweb puts meaning into media type *parameters*
(`multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50`),
with quoted strings that may hold `;` or `,`. Generic helpers drop or mangle those, so this
module tokenises RFC 9110 media types itself and offers the ordered list of acceptable
ranges that each DICOMweb resource negotiates against.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from gateway.exceptions import InvalidInputError

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
MULTIPART_RELATED = "multipart/related"
OCTET_STREAM = "application/octet-stream"

_MAX_HEADER_LENGTH = 8192


@dataclass(frozen=True, slots=True)
class MediaType:
    """One media type or media range with lower-cased name and parameter names."""

    name: str
    params: Mapping[str, str] = field(default_factory=dict)
    quality: float = 1.0

    @property
    def main(self) -> str:
        return self.name.partition("/")[0]

    def matches(self, concrete: str) -> bool:
        """True if this range (`*/*`, `image/*`, `image/png`) admits `concrete`."""
        if self.name == "*/*":
            return True
        main, _, sub = self.name.partition("/")
        other_main, _, other_sub = concrete.lower().partition("/")
        return main == other_main and sub in ("*", other_sub)

    def __str__(self) -> str:
        rendered = self.name
        for key, value in self.params.items():
            rendered += f'; {key}="{value}"' if _needs_quotes(value) else f"; {key}={value}"
        return rendered


def parse_media_type(value: str) -> MediaType:
    """Parse one Content-Type value; raise InvalidInputError if it is not a media type."""
    items = list(_split(value, ";"))
    if not items or len(value) > _MAX_HEADER_LENGTH:
        raise InvalidInputError("the media type is empty or too long")
    name = items[0].strip().lower()
    main, slash, sub = name.partition("/")
    if not slash or not _is_token(main) or not _is_token(sub):
        raise InvalidInputError(f"{items[0].strip()!r} is not a media type (type/subtype)")
    params: dict[str, str] = {}
    quality = 1.0
    for raw in items[1:]:
        if not raw.strip():
            continue
        key, equals, val = raw.partition("=")
        key = key.strip().lower()
        if not equals or not _is_token(key):
            raise InvalidInputError(f"media type parameter {raw.strip()!r} is not key=value")
        val = _unquote(val.strip())
        if key == "q":
            try:
                quality = float(val)
            except ValueError as exc:
                raise InvalidInputError(f"q={val!r} is not a number") from exc
            if not 0 <= quality <= 1:
                raise InvalidInputError(f"q={val} is outside 0..1")
            continue
        params[key] = val
    return MediaType(name, params, quality)


def parse_accept(value: str | None) -> list[MediaType]:
    """Acceptable ranges, best first (stable for equal q); `*/*` when the header is absent.

    Ranges with q=0 are dropped: they say "not this".
    """
    if value is None or not value.strip():
        return [MediaType("*/*")]
    if len(value) > _MAX_HEADER_LENGTH:
        raise InvalidInputError("the Accept header is too long")
    ranges = [parse_media_type(item) for item in _split(value, ",") if item.strip()]
    ranges = [item for item in ranges if item.quality > 0]
    return sorted(ranges, key=lambda item: -item.quality)


def accepts_json(ranges: list[MediaType]) -> bool:
    """True if a DICOM JSON answer is acceptable (`application/dicom+json` or JSON, `*/*`)."""
    return (
        any(item.matches(DICOM_JSON) or item.name == "application/json" for item in ranges)
        or not ranges
    )


def _split(value: str, separator: str) -> Iterator[str]:
    """Split on `separator` outside double-quoted strings."""
    start, quoted, escaped = 0, False, False
    for index, char in enumerate(value):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            yield value[start:index]
            start = index + 1
    if quoted:
        raise InvalidInputError(f"unbalanced quotes in {value[:80]!r}")
    yield value[start:]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        out, escaped = [], False
        for char in inner:
            if escaped or char != "\\":
                out.append(char)
                escaped = False
            else:
                escaped = True
        return "".join(out)
    return value


_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def _is_token(value: str) -> bool:
    return bool(value) and all(char in _TOKEN_CHARS for char in value)


def _needs_quotes(value: str) -> bool:
    return not _is_token(value)
