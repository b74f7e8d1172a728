"""Sandboxed execution of untrusted Python programs (model-generated code).

    from promptintern.sandbox import Limits, get_backend, run_python
    result = run_python(program, backend=get_backend("bwrap"), limits=Limits(wall_s=10))
    result.status  # "passed" | "failed" | "timeout" | "error"

A run passes only if the program exits with 0 *and* its top level ran to the end, proven by a
per-run secret nonce printed after it (see :mod:`promptintern.sandbox.limits`).  Backends:
``bwrap`` (default, :mod:`.bwrap`), ``docker`` (:mod:`.docker`) and ``subprocess`` (no isolation,
:mod:`.unsafe`, needs ``unsafe=True``).
"""

from __future__ import annotations

from typing import Any

from .limits import Backend, ExecResult, Limits, SandboxError, SandboxUnavailable

BACKENDS = ("bwrap", "docker", "subprocess")

__all__ = ["BACKENDS", "Backend", "ExecResult", "Limits", "SandboxError", "SandboxUnavailable",
           "get_backend", "run_python"]


def get_backend(name: str = "bwrap", *, unsafe: bool = False, **options: Any) -> Backend:
    """Construct a backend by name; ``options`` go to its constructor (e.g. ``image=`` for docker).

    Raises :class:`SandboxUnavailable` if it cannot run here, :class:`SandboxError` for ``subprocess``
    without ``unsafe=True``, :class:`ValueError` for an unknown name.
    """
    if name == "bwrap":
        from .bwrap import BwrapBackend

        return BwrapBackend(**options)
    if name == "docker":
        from .docker import DockerBackend

        return DockerBackend(**options)
    if name == "subprocess":
        from .unsafe import UnsafeSubprocessBackend

        return UnsafeSubprocessBackend(unsafe=unsafe, **options)
    raise ValueError(f"unknown sandbox backend {name!r}; choose one of {', '.join(BACKENDS)}")


def run_python(program: str, *, backend: Backend | str = "bwrap", limits: Limits | None = None) -> ExecResult:
    """Run ``program`` (Python source) in ``backend`` (an instance or a name) under ``limits``."""
    if isinstance(backend, str):
        backend = get_backend(backend)
    return backend.run(program, limits)
