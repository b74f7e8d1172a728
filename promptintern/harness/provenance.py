"""Where a result came from: git commit, package versions, Python and hardware, collected cheaply.

Nothing here loads a model or imports torch: package versions come from installed metadata, the GPU from
``nvidia-smi`` (or from torch when it is already imported), git from a subprocess that takes no index lock
(``--no-optional-locks``). Every probe tolerates its tool being absent (no git checkout, no GPU) and then
reports ``None``. :func:`environment` is computed once per process; :func:`collect` adds per-run fields.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from typing import Any

from promptintern.paths import REPO_ROOT

PACKAGES = ("promptintern", "torch", "transformers", "peft", "accelerate", "llmlingua", "sacrebleu")


def utc_now() -> str:
    """Current UTC time as ISO 8601 with a trailing ``Z`` (seconds)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _run(*cmd: str, timeout: float = 10.0) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_info(root=REPO_ROOT) -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the checkout at ``root`` (``None`` values outside a git checkout).

    ``dirty`` counts tracked files only (untracked files do not change a result's code), outside ``results/``
    (the harness's own output, rewritten by every run).
    """
    if shutil.which("git") is None:
        return {"commit": None, "dirty": None}
    git = ("git", "--no-optional-locks", "-C", str(root))
    commit = _run(*git, "rev-parse", "HEAD")
    if not commit:
        return {"commit": None, "dirty": None}
    status = _run(*git, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (``None`` when it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
    except OSError:
        pass
    return fields


def _cpu_model(info: dict[str, str]) -> str:
    return info.get("model name") or platform.processor() or platform.machine()


def _cpu_generation(info: dict[str, str]) -> str | None:
    """``family F model M`` of the CPU: a VM often names only the vendor ("AMD EPYC"), and two such VMs can be
    generations apart (e.g. family 25 / Zen 4 against family 26 / Zen 5), which wall times depend on."""
    if "cpu family" not in info or "model" not in info:
        return None
    return f"family {info['cpu family']} model {info['model']}"


def _ram_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _gpus() -> list[str]:
    torch = sys.modules.get("torch")  # only if someone already paid for the import
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception:  # noqa: BLE001 - a broken CUDA setup still means "no usable GPU"
            return []
    if shutil.which("nvidia-smi"):
        out = _run("nvidia-smi", "--query-gpu=name", "--format=csv,noheader")
        return [line.strip() for line in out.splitlines() if line.strip()] if out else []
    return []


def hardware() -> dict[str, Any]:
    """CPU model, logical cores (and those this process may use), RAM in GiB, GPU names."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = _cpuinfo()
    return {
        "cpu": _cpu_model(info),
        "cpu_generation": _cpu_generation(info),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "ram_gib": _ram_gib(),
        "gpu": _gpus(),
    }


@lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """Process-wide provenance: git, package versions, Python, platform and hardware (computed once)."""
    return {
        "git": git_info(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hardware": hardware(),
    }


def collect(**run: Any) -> dict[str, Any]:
    """:func:`environment` + per-run fields (``seed``, ``wall_s``, ``settings_key``...) + ``created_at``."""
    return {**environment(), **run, "created_at": utc_now()}


def describe_hardware(hw: dict[str, Any]) -> str:
    """One line, e.g. ``AMD EPYC 7B13 (2 cores, 23.5 GiB RAM, no GPU)``."""
    gpu = ", ".join(hw.get("gpu") or []) or "no GPU"
    cores = hw.get("cores_usable") or hw.get("cores")
    generation = f"{hw['cpu_generation']}, " if hw.get("cpu_generation") else ""
    return f"{hw.get('cpu')} ({generation}{cores} cores, {hw.get('ram_gib')} GiB RAM, {gpu})"
