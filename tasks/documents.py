"""API documents: YAML lists of ``{name, signature, meaning, example}`` rendered into the template."""

from __future__ import annotations

from pathlib import Path

import yaml

REQUIRED_FIELDS = ("name", "signature", "meaning", "example")


def load_documents(path: Path) -> list[dict[str, str]]:
    """Read and validate a documents file; errors name the file, entry and field."""
    with open(path, encoding="utf-8") as fh:
        entries = yaml.safe_load(fh)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of API document entries")
    for i, entry in enumerate(entries, 1):
        for key in REQUIRED_FIELDS:
            if not isinstance(entry, dict) or not str(entry.get(key, "")).strip():
                raise ValueError(f"{path}: entry {i}: field {key!r} is missing or empty")
    return entries


def render_documents(path: Path, header: str) -> str:
    """The documents block: a header line, then one ``<API Doc i>`` entry per function/utility."""
    lines = [header.strip()] if header.strip() else []
    for i, e in enumerate(load_documents(path), 1):
        lines.append(
            f"<API Doc {i}> {e['signature'].strip()}: {e['meaning'].strip()} Example: {e['example'].strip()}"
        )
    return "\n".join(lines)
