"""Tag coercion: set, remove and map attribute values of the top-level data set.

Values were checked against each attribute's VR when the config was loaded
(gateway/transform/settings.py), and UIDs, file meta and pixel data cannot be named, so
applying a coercion cannot make an object that names something else.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from gateway.transform.settings import CoerceSettings


@dataclass(frozen=True, slots=True)
class Coerced:
    """How many attributes each kind of rule changed in one data set."""

    set: int
    removed: int
    mapped: int

    def describe(self) -> str:
        counts = ((self.set, "set"), (self.removed, "removed"), (self.mapped, "mapped"))
        parts = [f"{count} {what}" for count, what in counts if count]
        return f"coerced ({', '.join(parts)})" if parts else "coerced (nothing matched)"


def coerce(dataset: Dataset, settings: CoerceSettings) -> Coerced:
    """Apply `settings` to `dataset` in place."""
    removed = 0
    for tag in settings.remove:
        if tag in dataset:
            del dataset[tag]
            removed += 1
    mapped = 0
    for tag, pairs in settings.map:
        element = dataset.get(tag)
        if element is None or element.VM != 1:
            continue
        current = str(element.value).strip()
        for old, new in pairs:
            if current == old.strip():
                element.value = new
                mapped += 1
                break
    for tag, vr, value in settings.set:
        dataset.add_new(tag, vr, list(value) if isinstance(value, tuple) else value)
    return Coerced(set=len(settings.set), removed=removed, mapped=mapped)
