"""Desired-vs-live comparison shared by the Azure and Kubernetes steps.

Only the fields we set are compared: Azure and Kubernetes add defaults and
status to what they store, and those must not count as drift."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Change:
    kind: str
    name: str
    action: str                      # "create", "update", "unchanged", "delete"
    fields: list[str] = field(default_factory=list)

    def line(self) -> str:
        marks = {"create": "+", "update": "~", "unchanged": "=", "delete": "-"}
        detail = f" ({', '.join(self.fields[:6])}{', ...' if len(self.fields) > 6 else ''})" if self.fields else ""
        return f"  {marks[self.action]} {self.kind} {self.name}: {self.action}{detail}"


def differing_paths(desired: Any, live: Any, ignore: frozenset[str] = frozenset(), path: str = "") -> list[str]:
    """Paths (a.b[0].c) where `live` does not contain `desired`. Azure echoes
    locations in its own spelling ("West Europe" for westeurope, in `location` and
    Cosmos DB's `locationName`), so those compare loosely, and lists of {"name": ...}
    (capabilities) as sets; every other value compares exactly."""
    if path in ignore:
        return []
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return [path or "."]
        found: list[str] = []
        for key, value in desired.items():
            found += differing_paths(value, live.get(key), ignore, f"{path}.{key}" if path else key)
        return found
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return [path]
        if _named(desired) and _named(live):  # e.g. Cosmos capabilities: a set, in whatever order ARM keeps
            live = sorted(live, key=lambda item: item["name"])
            desired = sorted(desired, key=lambda item: item["name"])
        found = []
        for index, (want, have) in enumerate(zip(desired, live)):
            found += differing_paths(want, have, ignore, f"{path}[{index}]")
        return found
    if path.endswith(("location", "locationName")) and isinstance(desired, str) and isinstance(live, str):
        return [] if _normalise(desired) == _normalise(live) else [path]
    return [] if desired == live else [path]


def _named(items: list) -> bool:
    return all(isinstance(item, dict) and set(item) == {"name"} for item in items)


def _normalise(value: str) -> str:
    return value.replace(" ", "").lower()


def change_for(kind: str, name: str, desired: dict, live: dict | None,
               ignore: frozenset[str] = frozenset()) -> Change:
    if live is None:
        return Change(kind, name, "create")
    paths = differing_paths(desired, live, ignore)
    return Change(kind, name, "update" if paths else "unchanged", paths)
