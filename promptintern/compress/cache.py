"""On-disk cache of compression results under ``cache_dir("compressed")``.

An entry is one JSON file ``<sha256>.json``; the key is the sha256 of the canonical JSON (sorted keys) of
everything that determines the output: the text(s), the rate(s), the question, the compressor
fingerprints (backend, model id, options, llmlingua version) and :data:`SCHEMA`.  Writes are atomic
(temporary file in the same directory + ``os.replace``), so concurrent runs never see partial files;
an unreadable entry counts as a miss.

:class:`TemplateCompressor <promptintern.compress.base.TemplateCompressor>` caches whole templates;
:class:`CachedCompressor` caches single texts for any compressor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from promptintern.compress.base import CompressionResult, Compressor, check_rate
from promptintern.io import write_json
from promptintern.keys import content_key
from promptintern.paths import cache_dir

#: Bump when the stored layout or the meaning of a key changes.
SCHEMA = 2


class CompressionCache:
    """JSON entries under ``directory`` (default ``cache_dir("compressed")``)."""

    def __init__(self, directory: Path | None = None):
        self.directory = Path(directory) if directory is not None else cache_dir("compressed")
        self.directory.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(payload: dict[str, Any]) -> str:
        return content_key("compression", {"schema": SCHEMA, **payload})

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def load(self, key: str) -> dict[str, Any] | None:
        try:
            with open(self.path(key), encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def store(self, key: str, data: dict[str, Any]) -> Path:
        target = self.path(key)
        write_json(target, {"schema": SCHEMA, "key": key, **data}, indent=1)
        return target


class CachedCompressor:
    """Wraps a compressor; results per (text, rate, question, fingerprint) come from disk when present."""

    def __init__(self, inner: Compressor, directory: Path | None = None):
        self.inner = inner
        self.name = inner.name
        self._directory = directory
        #: Whether the last :meth:`compress` call was answered from the cache.
        self.last_from_cache = False

    def fingerprint(self) -> dict[str, Any]:
        return self.inner.fingerprint()

    def compress(self, text: str, rate: float, *, question: str | None = None) -> CompressionResult:
        rate = check_rate(rate)
        store = CompressionCache(self._directory)
        key = store.key(
            {
                "kind": "text",
                "text": text,
                "rate": rate,
                "question": question,
                "compressor": self.fingerprint(),
            }
        )
        hit = store.load(key)
        if hit is not None:
            self.last_from_cache = True
            return CompressionResult.from_dict(hit["result"])
        result = self.inner.compress(text, rate, question=question)
        store.store(key, {"fingerprint": self.fingerprint(), "result": result.to_dict()})
        self.last_from_cache = False
        return result
