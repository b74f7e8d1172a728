"""A local OpenAI-compatible chat server (llama-cpp-python) for the API-based baselines.

:class:`LocalOpenAIServer` runs ``python -m llama_cpp.server`` (the server shipped with
``llama-cpp-python[server]``) as a subprocess on ``127.0.0.1`` with a GGUF model, by default the suite's
embedded SmolLM2-135M-Instruct (:func:`promptintern.serving.models.embedded_gguf_path`), waits until
``GET /v1/models`` answers and stops it again (SIGTERM, then SIGKILL) when the block ends.  It stands in for
the OpenAI API the paper used (GPT-4); any client that speaks the OpenAI protocol, e.g. the ``openai``
package, talks to :attr:`LocalOpenAIServer.base_url`.  It only ever binds the loopback interface.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import IO, Any

LOOPBACK = "127.0.0.1"
SERVER_PACKAGE = "llama-cpp-python[server]==0.3.36"


class ServerStartError(RuntimeError):
    """Raised when the local server is not installed, exits early or does not answer in time."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def llama_cpp_version() -> str | None:
    """Installed ``llama-cpp-python`` version, read from package metadata (the library is not loaded)."""
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return None


class LocalOpenAIServer:
    """``llama_cpp.server`` on ``127.0.0.1:<port>`` serving one GGUF; a context manager.

    ``port=None`` picks a free port.  ``n_ctx`` is the context window the server allocates, ``n_threads``
    the CPU threads it uses for prompts and generation (default: all cores).  The server runs with
    ``OMP_WAIT_POLICY=PASSIVE`` unless the caller's environment sets it: llama.cpp built from the PyPI sdist
    uses OpenMP, whose spinning worker threads made generation 7-13x slower on a busy 2-core machine.
    ``start_timeout`` bounds the wait for ``/v1/models``;
    on failure :class:`ServerStartError` carries the tail of the server's output.  The server's
    ``model`` name (``--model_alias``) is the GGUF file name; :attr:`model_id` returns what the server
    itself lists.
    """

    def __init__(
        self,
        gguf_path: str | os.PathLike | None = None,
        *,
        host: str = LOOPBACK,
        port: int | None = None,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        start_timeout: float = 120.0,
        extra_args: tuple[str, ...] = (),
    ):
        if host != LOOPBACK:
            raise ValueError(f"LocalOpenAIServer only binds {LOOPBACK}, got host={host!r}")
        if gguf_path is None:
            from promptintern.serving.models import embedded_gguf_path

            gguf_path = embedded_gguf_path()
        self.gguf_path = Path(gguf_path)
        self.host = host
        self.port = port
        self.n_ctx = int(n_ctx)
        self.n_threads = int(n_threads or os.cpu_count() or 1)
        self.start_timeout = float(start_timeout)
        self.extra_args = tuple(extra_args)
        self.model_alias = self.gguf_path.name
        self.process: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None
        self._log: IO[bytes] | None = None
        self._model_id: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1`` (the ``base_url`` of ``openai.OpenAI``)."""
        if self.port is None:
            raise RuntimeError("the server has no port yet; call start() or enter the context first")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        """The server's command line (``self.port`` must be set)."""
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.gguf_path),
            "--model_alias",
            self.model_alias,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.n_threads),
            "--n_threads_batch",
            str(self.n_threads),
            *self.extra_args,
        ]

    def start(self) -> LocalOpenAIServer:
        """Start the server and wait until it answers; no-op when it is already running."""
        if self.running:
            return self
        if not self.gguf_path.is_file():
            raise ServerStartError(f"GGUF model file not found: {self.gguf_path}")
        if llama_cpp_version() is None:
            raise ServerStartError(
                f"the local OpenAI-compatible server needs llama-cpp-python: pip install '{SERVER_PACKAGE}'"
            )
        if self.port is None:
            self.port = free_port(self.host)
        self._log = tempfile.TemporaryFile(prefix="llama-cpp-server-")
        begin = time.perf_counter()
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - begin
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        assert self.process is not None
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerStartError(
                    f"llama_cpp.server exited with code {code} before answering "
                    f"(model {self.gguf_path}, port {self.port}); its output ends with:\n{self.output_tail()}"
                )
            try:
                self._model_id = self._first_model_id()
                return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"llama_cpp.server did not answer GET {self.base_url}/models within "
                    f"{self.start_timeout:.0f} s (model {self.gguf_path}); its output ends with:\n"
                    f"{self.output_tail()}"
                )
            time.sleep(0.2)

    def _first_model_id(self) -> str:
        with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
            data: dict[str, Any] = json.load(response)
        models = data.get("data") or []
        if not models:
            raise ValueError("the server lists no model")
        return str(models[0]["id"])

    @property
    def model_id(self) -> str:
        """The model name the server lists under ``/v1/models`` (what requests should name)."""
        if self._model_id is None:
            self._model_id = self._first_model_id()
        return self._model_id

    def output_tail(self, chars: int = 3000) -> str:
        """The last ``chars`` characters the server wrote to stdout/stderr."""
        if self._log is None or self._log.closed:
            return "(no output captured)"
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - chars))
        return self._log.read().decode("utf-8", "replace").strip() or "(no output)"

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGKILL after ``timeout`` s); safe to call repeatedly."""
        process, self.process = self.process, None
        atexit.unregister(self.stop)
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        self._model_id = None

    def __enter__(self) -> LocalOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running on {self.base_url}" if self.running else "stopped"
        return f"LocalOpenAIServer({str(self.gguf_path)!r}, {state})"
