"""The `destinations.NAME.transform` section: what to change in what a destination receives.

Everything is checked at load, so a mistake stops `check-config` and `serve` instead of
dead-lettering studies at 3 a.m.: unknown keywords (with the closest match), values that do
not fit the attribute's VR, and attempts to change what names an object (UIDs, SOP class,
transfer syntax, file meta) through `coerce`: those change only by de-identification or
`transfer_syntax`, which keep the object consistent.

Secrets are never part of the settings: `deidentify` names the environment variable or file
holding the key that makes replacement UIDs and pseudonyms (read by gateway/transform/keys.py
when the sender is built).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pydicom.uid
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian

from gateway.config_values import flag as _flag
from gateway.config_values import mapping as _mapping
from gateway.config_values import no_unknown as _no_unknown
from gateway.config_values import text as _text
from gateway.exceptions import ConfigError
from gateway.transform.tags import describe, dictionary_vr_or_none, parse_tag, standard_vr

DEFAULT_SECRET_ENV = "DICOM_GATEWAY_DEID_SECRET"  # noqa: S105 (a variable name)
"""Where the key comes from when `deidentify: basic` names no source."""

TRANSCODE_TARGETS = frozenset({ExplicitVRLittleEndian})
"""Syntaxes we can re-encode into (gateway/dicom/transcode.py decodes anything else into it)."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PSEUDONYM_PREFIX = re.compile(r"[A-Z0-9_-]{0,16}")
# Attributes whose change would make the object inconsistent or re-decode every other value.
_PROTECTED_KEYWORDS = {0x00080005: "it changes how every text value is decoded"}

ScalarValue = str | int | float | None
CoercedValue = ScalarValue | tuple[str | int | float, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CoerceSettings:
    """Tag normalization, applied after de-identification (its values are what is sent)."""

    set: tuple[tuple[BaseTag, str, CoercedValue], ...] = ()  # (tag, VR, value)
    remove: tuple[BaseTag, ...] = ()
    map: tuple[tuple[BaseTag, tuple[tuple[str, str], ...]], ...] = ()  # (tag, (from, to)...)

    @property
    def empty(self) -> bool:
        return not (self.set or self.remove or self.map)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeidentifySettings:
    """PS3.15 Annex E Basic Application Level Confidentiality Profile, with two options."""

    profile: Literal["basic"] = "basic"
    secret_env: str | None = DEFAULT_SECRET_ENV
    secret_file: Path | None = None
    retain_dates: bool = False  # Retain Longitudinal Temporal Information with Full Dates
    retain_patient_characteristics: bool = False  # Retain Patient Characteristics
    pseudonym_prefix: str = "ANON"
    burned_in_annotation: Literal["refuse", "allow"] = "refuse"


@dataclass(frozen=True, slots=True, kw_only=True)
class TransformSettings:
    """The steps for one destination, in the order they run: de-identify, coerce, transcode."""

    deidentify: DeidentifySettings | None = None
    coerce: CoerceSettings | None = None
    transfer_syntax: str | None = None

    def summary(self) -> str:
        """One line for `check-config`, e.g. `de-identify (basic, key from $X), coerce ...`."""
        parts = []
        deid = self.deidentify
        if deid is not None:
            source = f"${deid.secret_env}" if deid.secret_env else str(deid.secret_file)
            options = [
                name
                for name, on in (
                    ("retain dates", deid.retain_dates),
                    ("retain patient characteristics", deid.retain_patient_characteristics),
                    ("burned-in allowed", deid.burned_in_annotation == "allow"),
                )
                if on
            ]
            parts.append(f"de-identify ({', '.join(['basic', *options])}; key from {source})")
        if self.coerce is not None:
            c = self.coerce
            parts.append(f"coerce ({len(c.set)} set, {len(c.remove)} remove, {len(c.map)} map)")
        if self.transfer_syntax is not None:
            parts.append(f"transcode to {UID(self.transfer_syntax).name}")
        return ", then ".join(parts)


def parse_transform(raw: object, key: str, base_dir: Path) -> TransformSettings | None:
    """Validate `destinations.NAME.transform`; None when absent or empty."""
    if raw is None:
        return None
    entry = _mapping(raw, key)
    _no_unknown(entry, key, {"coerce", "deidentify", "transfer_syntax"})
    deidentify = _deidentify(entry.get("deidentify"), f"{key}.deidentify", base_dir)
    coerce = _coerce(entry.get("coerce"), f"{key}.coerce")
    syntax = _transfer_syntax(entry.get("transfer_syntax"), f"{key}.transfer_syntax")
    if deidentify is None and coerce is None and syntax is None:
        return None
    return TransformSettings(deidentify=deidentify, coerce=coerce, transfer_syntax=syntax)


# -- deidentify ----------------------------------------------------------------------------


def _deidentify(raw: object, key: str, base_dir: Path) -> DeidentifySettings | None:
    if raw is None or raw is False:
        return None
    if raw == "basic" or raw is True:
        return DeidentifySettings()
    if isinstance(raw, str):
        raise ConfigError(f"{key} is {raw!r}; the supported profile is basic (PS3.15 Annex E)")
    entry = _mapping(raw, key)
    _no_unknown(
        entry,
        key,
        {
            "profile",
            "secret_env",
            "secret_file",
            "retain_dates",
            "retain_patient_characteristics",
            "pseudonym_prefix",
            "burned_in_annotation",
        },
    )
    profile = entry.get("profile", "basic")
    if profile != "basic":
        raise ConfigError(
            f"{key}.profile is {profile!r}; the supported profile is basic (PS3.15 Annex E)"
        )
    secret_env = entry.get("secret_env")
    secret_file = entry.get("secret_file")
    if secret_env is not None and secret_file is not None:
        raise ConfigError(f"{key}: give secret_env or secret_file, not both")
    if secret_env is not None and (
        not isinstance(secret_env, str) or not _ENV_NAME.fullmatch(secret_env)
    ):
        raise ConfigError(
            f"{key}.secret_env must be the name of an environment variable, e.g. DEID_SECRET; "
            "never put the secret itself in the config"
        )
    if secret_file is not None and (not isinstance(secret_file, str) or not secret_file):
        raise ConfigError(f"{key}.secret_file must be a file path")
    prefix = _text(entry, key, "pseudonym_prefix", "ANON")
    if not _PSEUDONYM_PREFIX.fullmatch(prefix):
        raise ConfigError(
            f"{key}.pseudonym_prefix is {prefix!r}; use up to 16 capital letters, digits, "
            "'_' or '-'"
        )
    burned = entry.get("burned_in_annotation", "refuse")
    if burned not in ("refuse", "allow"):
        raise ConfigError(
            f"{key}.burned_in_annotation is {burned!r}; use refuse (the default: images that "
            "declare burned-in text are dead-lettered) or allow"
        )
    return DeidentifySettings(
        secret_env=None if secret_file is not None else (secret_env or DEFAULT_SECRET_ENV),
        secret_file=None if secret_file is None else _resolve(secret_file, base_dir),
        retain_dates=_flag(entry, key, "retain_dates"),
        retain_patient_characteristics=_flag(entry, key, "retain_patient_characteristics"),
        pseudonym_prefix=prefix,
        burned_in_annotation=burned,
    )


def _resolve(path: str, base_dir: Path) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else (base_dir / candidate).resolve()


# -- coerce ----------------------------------------------------------------------------------


def _coerce(raw: object, key: str) -> CoerceSettings | None:
    if raw is None:
        return None
    entry = _mapping(raw, key)
    _no_unknown(entry, key, {"set", "remove", "map"})
    settings = CoerceSettings(
        set=tuple(_set_entries(entry.get("set"), f"{key}.set")),
        remove=tuple(_remove_entries(entry.get("remove"), f"{key}.remove")),
        map=tuple(_map_entries(entry.get("map"), f"{key}.map")),
    )
    seen: dict[BaseTag, str] = {}
    for part, tags in (
        ("set", [tag for tag, _vr, _value in settings.set]),
        ("remove", list(settings.remove)),
        ("map", [tag for tag, _pairs in settings.map]),
    ):
        for tag in tags:
            if tag in seen:
                raise ConfigError(
                    f"{key}: {describe(tag)} appears in both {seen[tag]} and {part}; "
                    "keep it in one of them"
                )
            seen[tag] = part
    return None if settings.empty else settings


def _set_entries(raw: object, key: str) -> list[tuple[BaseTag, str, CoercedValue]]:
    result = []
    for name, value in _mapping(raw, key).items():
        entry_key = f"{key}.{name}"
        tag = parse_tag(name, entry_key)
        vr = _settable_vr(tag, entry_key)
        result.append((tag, vr, _checked_value(tag, vr, value, entry_key)))
    return result


def _remove_entries(raw: object, key: str) -> list[BaseTag]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{key} must be a list of attributes, e.g. [StationName, (0009,0010)]")
    result = []
    for index, name in enumerate(raw):
        entry_key = f"{key}[{index}]"
        tag = parse_tag(name, entry_key)
        _refuse_protected(tag, entry_key)
        if not tag.is_private and dictionary_vr_or_none(tag) == "UI":
            _refuse_uid(tag, entry_key)
        result.append(tag)
    return result


def _map_entries(raw: object, key: str) -> list[tuple[BaseTag, tuple[tuple[str, str], ...]]]:
    result = []
    for name, pairs in _mapping(raw, key).items():
        entry_key = f"{key}.{name}"
        tag = parse_tag(name, entry_key)
        vr = _settable_vr(tag, entry_key)
        table = _mapping(pairs, entry_key)
        if not table:
            raise ConfigError(f"{entry_key} must map old values to new ones, e.g. {{OLD: New}}")
        checked = []
        for old, new in table.items():
            if not isinstance(old, str) or not isinstance(new, str):
                raise ConfigError(
                    f"{entry_key}: map text to text ({old!r}: {new!r}); quote numbers"
                )
            _checked_value(tag, vr, new, f"{entry_key}.{old}")
            checked.append((old, new))
        result.append((tag, tuple(checked)))
    return result


def _settable_vr(tag: BaseTag, key: str) -> str:
    _refuse_protected(tag, key)
    vr = standard_vr(tag, key)
    if vr == "UI":
        _refuse_uid(tag, key)
    if vr == "SQ":
        raise ConfigError(f"{key}: {describe(tag)} is a sequence; coerce sets only plain values")
    if "or" in vr or vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        raise ConfigError(f"{key}: {describe(tag)} holds binary data (VR {vr}); it cannot be set")
    return vr


def _refuse_protected(tag: BaseTag, key: str) -> None:
    if tag.group == 0x0002:
        raise ConfigError(
            f"{key}: {describe(tag)} is file meta information; it is written from the data set "
            "(use transfer_syntax to change the transfer syntax)"
        )
    if tag.element == 0x0000:
        raise ConfigError(f"{key}: {describe(tag)} is a group length; it is never set by hand")
    if tag.group == 0x7FE0 or tag.group >= 0xFFFA:
        raise ConfigError(f"{key}: {describe(tag)} is pixel data or a trailer; coerce leaves it")
    if int(tag) in _PROTECTED_KEYWORDS:
        raise ConfigError(f"{key}: {describe(tag)} cannot be coerced: {_PROTECTED_KEYWORDS[tag]}")


def _refuse_uid(tag: BaseTag, key: str) -> None:
    raise ConfigError(
        f"{key}: {describe(tag)} is a UID; coerce never changes UIDs, SOP class or transfer "
        "syntax (a changed UID must change consistently across a study: use deidentify, "
        "which remaps every UID, or transfer_syntax)"
    )


def _checked_value(tag: BaseTag, vr: str, value: Any, key: str) -> CoercedValue:
    """`value` as the element will hold it, or an error naming what the VR allows."""
    if isinstance(value, bool | Mapping):
        raise ConfigError(f"{key}: {value!r} is not a value for {describe(tag)} (VR {vr})")
    values: CoercedValue
    if isinstance(value, list):
        if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{key}: a list may hold only text and numbers")
        values = tuple(value)
    else:
        values = value
    try:
        DataElement(
            tag,
            vr,
            list(values) if isinstance(values, tuple) else values,
            validation_mode=pydicom_config.RAISE,  # pydicom checks each value against the VR
        )
    except (ValueError, TypeError, OverflowError) as exc:
        what = f"{describe(tag)} (VR {vr})"
        raise ConfigError(f"{key}: {value!r} does not fit {what}: {exc}") from None
    return values


# -- transfer syntax -------------------------------------------------------------------------


def _transfer_syntax(raw: object, key: str) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"{key} must be a transfer syntax UID or name")
    text = raw.strip()
    named = getattr(pydicom.uid, text, None)  # pydicom names every transfer syntax it knows
    uid = named if isinstance(named, UID) else UID(text)
    try:
        known = uid.is_transfer_syntax
    except ValueError:
        known = False
    if not known:
        raise ConfigError(
            f"{key} is {text!r}, not a transfer syntax; use e.g. 1.2.840.10008.1.2.1 "
            "(ExplicitVRLittleEndian)"
        )
    if uid not in TRANSCODE_TARGETS:
        supported = ", ".join(f"{t} ({UID(t).keyword})" for t in sorted(TRANSCODE_TARGETS))
        raise ConfigError(
            f"{key} is {uid.name} ({uid}); the gateway can transcode only into "
            f"{supported}, which every DICOM peer must accept"
        )
    return str(uid)
