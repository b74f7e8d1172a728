"""Content keys: the one builder of every cache key in the suite.

A cached artifact (a compressed template, a retrieval result, a stage adapter, predictions, scores) may be
served again only when everything that produced it is unchanged. :func:`content_key` hashes a canonical
JSON payload (sorted keys) together with the artifact's ``kind`` and :data:`SCHEMA`; callers pass content,
never names that merely point at content:

* templates and documents as their text (:func:`template_identity`),
* instances as a digest of their ids, queries and references (:func:`instances_digest`),
* models by the sha256 of their files (:func:`model_identity`: the embedded GGUF, a local checkpoint's
  weight, config and tokenizer files) or, for a hub model, its id and the resolved revision,
* a task's metric and extractor version (``Task.metric_version``),
* a method's algorithm version (:data:`METHOD_VERSIONS`): bump it when the code that turns settings into
  prompts, adapters or predictions changes, so earlier runs of that method are never served again.

File hashes are remembered by (path, size, mtime) in ``cache_dir("hashes")``, so a 100 MB model file is read
once, not on every key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from promptintern.io import sha256_file, write_json
from promptintern.paths import cache_dir

#: Bump when the meaning of any key payload changes (every cached artifact is then recomputed).
SCHEMA = 2

#: Algorithm version per method (and per shared pipeline step). Bump a method's entry when its code
#: changes what it computes; tests check that a bump changes the run key.
METHOD_VERSIONS: dict[str, int] = {
    # shared steps: prompt building (fitting), retrieval (Eq. 3 keys), stage datasets, progressive trainer
    "pipeline": 2,
    # decoding only (enters experiment keys, not adapter keys): 2 = stop strings match the completion only
    "decoding": 2,
    "promptintern": 2,
    "zero-shot": 1,
    "zero-shot-full": 1,
    "prefix-cached": 2,  # served by llama.cpp too (its own prompt-prefix match)
    "ft-full": 1,
    "ft-compressed": 1,
    "ft-template": 1,
    "ft-none": 1,
    "selective-context": 1,
    "llmlingua": 1,
    "longllmlingua": 2,  # one context per API document
    "llmlingua2": 1,
    "gpt4-generation": 1,
    "gist": 1,
}

#: Files of a local checkpoint that determine its outputs (weights, config, tokenizer, chat template).
_MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".gguf", ".json", ".model", ".txt", ".jinja", ".pt")


def canonical(payload: Any) -> bytes:
    """The canonical JSON bytes of ``payload`` (sorted keys, no whitespace, UTF-8)."""
    return json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def content_key(kind: str, payload: Any, *, length: int | None = None) -> str:
    """Hex sha256 of ``{"kind", "schema", "payload"}``; ``length`` keeps only that many hex digits."""
    digest = hashlib.sha256(canonical({"kind": kind, "schema": SCHEMA, "payload": payload})).hexdigest()
    return digest[:length] if length else digest


def method_version(method: str) -> int:
    """The algorithm version of ``method`` (1 for a method registered without one)."""
    return METHOD_VERSIONS.get(method, 1)


def instances_digest(instances: Iterable[Any]) -> str:
    """sha256 over every instance's id, query and reference, in order."""
    digest = hashlib.sha256()
    for inst in instances:
        digest.update(canonical([inst.id, inst.query, inst.reference]))
        digest.update(b"\n")
    return digest.hexdigest()


def template_identity(template: Any) -> dict[str, str] | None:
    """The template's content: instruction and documents text (``None`` for no template)."""
    if template is None:
        return None
    return {"instruction": template.instruction, "documents": template.documents}


# -- models ---------------------------------------------------------------------------------------------


def _hash_index() -> Path:
    return cache_dir("hashes") / "files.json"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered by (resolved path, size, mtime_ns)."""
    path = Path(path).resolve()
    stat = path.stat()
    stamp = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    index_path = _hash_index()
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    if stamp in index:
        return index[stamp]
    value = sha256_file(path)
    index = {k: v for k, v in index.items() if not k.startswith(f"{path}|")} | {stamp: value}
    try:
        write_json(index_path, index, indent=None)
    except OSError:  # a read-only home still gets the right hash, just not remembered
        pass
    return value


def _hub_revision(model_id: str) -> str | None:
    """The commit the local HF cache resolves ``main`` (or ``name@rev``'s rev) to, else None."""
    name, _, rev = model_id.partition("@")
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
    ref = hub.expanduser() / f"models--{name.replace('/', '--')}" / "refs" / (rev or "main")
    try:
        return ref.read_text(encoding="utf-8").strip() or None
    except OSError:
        return rev or None


def model_identity(name: str) -> dict[str, Any]:
    """What a model name stands for, by content.

    ``embedded``: the sha256 of the shipped GGUF file. A local file or folder: the sha256 of every weight,
    config and tokenizer file in it. A hub id (optionally ``id@revision``): the id and the revision the
    local cache resolves it to (``None`` when it was never downloaded: loading it will then fail anyway).
    An ``openai:<model>`` name or any other API model is its name.
    """
    from promptintern.serving.models import EMBEDDED, embedded_gguf_path

    if name == EMBEDDED:
        gguf = embedded_gguf_path()
        return {"name": name, "file": gguf.name, "sha256": file_sha256(gguf)}
    path = Path(name).expanduser()
    if path.is_file():
        return {"name": path.name, "sha256": file_sha256(path)}
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix in _MODEL_FILE_SUFFIXES and ".cache" not in p.parts
        )
        return {"name": path.name, "files": {str(p.relative_to(path)): file_sha256(p) for p in files}}
    if ":" in name:  # openai:<model> and other API names
        return {"name": name}
    return {"name": name, "revision": _hub_revision(name)}


def model_key(name: str) -> str:
    """A short digest of :func:`model_identity` for keys and folder names."""
    return content_key("model", model_identity(name), length=16)
