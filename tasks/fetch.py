"""``promptintern data fetch``: download the datasets from their public sources, verified by sha256.

Each file listed in ``data_manifest.yaml`` is downloaded (streamed to a temp file, hashed, then renamed
into place) to the fetched-data root, which the loaders search after ``$PROMPTINTERN_DATA`` and
``../shared/data``. ``mirror`` replaces every source by ``<mirror>/<dataset>/<path>``; files without a
public URL (the restored Spider copy) can only come from a mirror.

Where the files come from (the URLs are in ``data_manifest.yaml``, each at a pinned commit). The sha256 of
each file is that of the copy under ``../shared/data`` that the suite was built and measured on, so a URL
must serve exactly those bytes:

- NL2Bash (``all.nl``, ``all.cm``, ``random_tokens.txt``): the original repository, TellinaTool/nl2bash at
  commit 466c5fe8, ``data/bash/``.
- MBPP (``mbpp.jsonl``): a third-party copy, not the original location. The original release is
  google-research/google-research, ``mbpp/mbpp.jsonl``. The suite's copy was taken from the GitHub
  repository muitiiifruckt/ASE, which vendors the file, at commit 83fa3f79
  (``../shared/data/mbpp/SOURCE.md``), and the pinned sha256 is that copy's. The original file is not
  byte-identical to it: google-research at commit 2251e8c6 has LF line endings where the copy has CRLF, and
  about 200 further characters differ, which were not traced. So the original cannot pass the sha256 check,
  and the URL is the fork, which serves the pinned bytes.
- Spider (``dev.json``, ``tables.json``, ``database/*/*.sqlite``, ``README.md``): a copy restored for this
  suite (English table and column names put back into a machine-translated copy; see its README.md). No
  public URL serves it (``url: null``), so it comes from a mirror only.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import requests
import yaml

from promptintern.io import sha256_file

MANIFEST = Path(__file__).with_name("data_manifest.yaml")
CHUNK = 1 << 16


class FetchError(RuntimeError):
    """A download failed, or its content does not match the manifest."""


@dataclass(frozen=True)
class FileSpec:
    dataset: str
    path: str
    url: str | None
    sha256: str


@lru_cache(maxsize=1)
def manifest() -> dict[str, dict]:
    with open(MANIFEST, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def file_specs(datasets: list[str] | None = None) -> list[FileSpec]:
    known = manifest()
    for name in datasets or []:
        if name not in known:
            raise FetchError(f"unknown dataset {name!r}; choose from {', '.join(known)}")
    return [
        FileSpec(name, f["path"], f["url"], f["sha256"])
        for name, entry in known.items()
        if not datasets or name in datasets
        for f in entry["files"]
    ]


def _download(url: str, target: Path, expected: str, timeout: float) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    digest = hashlib.sha256()
    try:
        with requests.get(url, stream=True, timeout=timeout) as resp, os.fdopen(fd, "wb") as out:
            if resp.status_code != 200:
                raise FetchError(f"{url}: HTTP {resp.status_code}")
            for block in resp.iter_content(CHUNK):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != expected:
            raise FetchError(f"{url}: sha256 {digest.hexdigest()} does not match the manifest ({expected})")
        os.replace(tmp, target)
    except requests.RequestException as exc:
        raise FetchError(f"{url}: {exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)


def fetch(
    dest: Path,
    datasets: list[str] | None = None,
    mirror: str | None = None,
    timeout: float = 60.0,
    on_file: Callable[[FileSpec, str], None] | None = None,
) -> dict[str, list[str]]:
    """Download missing or corrupt files into ``dest``; returns ``{"fetched", "present", "skipped"}`` paths."""
    report: dict[str, list[str]] = {"fetched": [], "present": [], "skipped": []}
    for spec in file_specs(datasets):
        rel = f"{spec.dataset}/{spec.path}"
        target = dest / spec.dataset / spec.path
        if target.is_file() and sha256_file(target) == spec.sha256:
            status = "present"
        else:
            url = f"{mirror.rstrip('/')}/{rel}" if mirror else spec.url
            if url is None:
                status = "skipped"
            else:
                _download(url, target, spec.sha256, timeout)
                status = "fetched"
        report[status].append(rel)
        if on_file:
            on_file(spec, status)
    return report
