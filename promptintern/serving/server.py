"""A local OpenAI-compatible server (llama-cpp-python) for one GGUF model, optionally with a GGUF LoRA adapter.

:class:`LocalOpenAIServer` runs llama-cpp-python's server (``llama-cpp-python[server]``) as a subprocess on
``127.0.0.1`` with a GGUF model, by default the suite's embedded SmolLM2-135M-Instruct
(:func:`promptintern.serving.models.embedded_gguf_path`), waits until ``GET /v1/models`` answers and stops it
again (SIGTERM, then SIGKILL) when the block ends.  It stands in for the OpenAI API the paper used (GPT-4) and
serves the latency rows (:mod:`promptintern.serving.latency`); any client that speaks the OpenAI protocol, e.g.
the ``openai`` package or :class:`~promptintern.serving.openai_backend.OpenAIGenerator`, talks to
:attr:`LocalOpenAIServer.base_url`.  It only ever binds the loopback interface.

Prefix reuse.  llama-cpp-python keeps the KV cache of the previous request and, in ``Llama.generate``, keeps the
entries of the longest token prefix the new prompt shares with it, so only the rest of the prompt is evaluated:
a prefix-cached serving row.  An API without prompt caching pays for the whole prompt on every request.  The
subprocess runs this module's ``__main__`` (``python -m promptintern.serving.server ...``), which hands its
arguments to llama-cpp-python's own server entry point; with ``prefix_reuse=False`` it gets
``--no_prefix_reuse`` and first replaces ``llama_cpp.Llama`` by :func:`fresh_prompt_llama`'s subclass, whose
every request evaluates its whole prompt.

The server's RAM prompt cache (``--cache true``, ``prompt_cache=True``) is off by default.  It lets a prompt
reuse a saved state whose shared prefix is longer than the one of the request just before (useful only when
prompts of different templates alternate on one server), but llama-cpp-python saves the whole state after
EVERY request and loads it on a hit, each a copy of about 100 MB for SmolLM2 (``n_batch`` x vocabulary float
logits plus the KV cells): on 2 CPU cores that added 0.25-0.45 s to a request whose prompt was otherwise
reused in 0.06 s (1,136-token prompt, 2 new tokens).  One server per configuration, as
:func:`promptintern.serving.latency.measure_latency` runs them, gets the whole template prefix from the KV
cache alone.
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
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import IO, Any

LOOPBACK = "127.0.0.1"
SERVER_PACKAGE = "llama-cpp-python[server]==0.3.36"
#: Command-line flag of this module's ``__main__``: serve every request from an empty KV cache.
NO_PREFIX_REUSE = "--no_prefix_reuse"


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


def _flag(value: bool) -> str:
    return "true" if value else "false"


class LocalOpenAIServer:
    """llama-cpp-python's server on ``127.0.0.1:<port>`` serving one GGUF; a context manager.

    ``port=None`` picks a free port.  ``n_ctx`` is the context window the server allocates, ``n_threads``
    the CPU threads that decode (default 1) and ``n_threads_batch`` those that process prompts (default: all
    cores).  The server runs with ``OMP_WAIT_POLICY=PASSIVE`` unless the caller's environment sets it: llama.cpp
    built from the PyPI sdist uses OpenMP, whose spinning worker threads made generation 7-13x slower on a busy
    2-core machine. Passive threads sleep between the many small steps of decoding one token, so two of them
    decoded at 50 tok/s where one decoded at 131 tok/s (SmolLM2-135M Q4_1, this 2-core VM); prompt processing
    (large matrix products) still doubles with the second thread (446 vs 232 tok/s at 1,050 tokens).
    ``start_timeout`` bounds the wait for ``/v1/models``;
    on failure :class:`ServerStartError` carries the tail of the server's output.

    ``lora`` is a GGUF LoRA adapter (:func:`promptintern.serving.llamacpp.adapter_gguf`) applied to the model
    (``--lora_path``); ``flash_attn`` switches llama.cpp's flash attention; ``prefix_reuse`` keeps the KV
    entries of the prompt prefix shared with earlier requests (plus the RAM prompt cache), ``False`` makes
    every request evaluate its whole prompt (see the module docstring); ``prompt_cache`` adds the RAM prompt
    cache (with ``prefix_reuse`` only; costly, see the module docstring).  ``logits_all=False`` (the server's
    own default is true) keeps only the last position's logits, as a serving API does: with it on, every
    prompt token's logits are computed and copied, which only ``logprobs`` requests need.  ``model_alias`` is
    the ``model`` name the server answers to (default: the GGUF file name); :attr:`model_id` returns what the
    server itself lists.  ``extra_args`` are appended to the server's command line.
    """

    def __init__(
        self,
        gguf_path: str | os.PathLike | None = None,
        *,
        host: str = LOOPBACK,
        port: int | None = None,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        start_timeout: float = 120.0,
        extra_args: tuple[str, ...] = (),
        lora: str | os.PathLike | None = None,
        flash_attn: bool = True,
        prefix_reuse: bool = True,
        prompt_cache: bool = False,
        logits_all: bool = False,
        model_alias: str | None = None,
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
        self.n_threads = int(n_threads or 1)
        self.n_threads_batch = int(n_threads_batch or os.cpu_count() or 1)
        self.start_timeout = float(start_timeout)
        self.extra_args = tuple(extra_args)
        self.lora = Path(lora) if lora is not None else None
        self.flash_attn = bool(flash_attn)
        self.prefix_reuse = bool(prefix_reuse)
        if prompt_cache and not prefix_reuse:
            raise ValueError(
                "prompt_cache=True needs prefix_reuse=True (a fresh KV cache discards loaded states)"
            )
        self.prompt_cache = bool(prompt_cache)
        self.logits_all = bool(logits_all)
        self.model_alias = model_alias or self.gguf_path.name
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
        options = ["--lora_path", str(self.lora)] if self.lora is not None else []
        if not self.prefix_reuse:
            options.append(NO_PREFIX_REUSE)
        elif self.prompt_cache:
            options += ["--cache", "true"]
        return [
            sys.executable,
            "-m",
            "promptintern.serving.server",
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
            str(self.n_threads_batch),
            "--flash_attn",
            _flag(self.flash_attn),
            "--logits_all",
            _flag(self.logits_all),
            *options,
            *self.extra_args,
        ]

    def start(self) -> LocalOpenAIServer:
        """Start the server and wait until it answers; no-op when it is already running."""
        if self.running:
            return self
        if not self.gguf_path.is_file():
            raise ServerStartError(f"GGUF model file not found: {self.gguf_path}")
        if self.lora is not None and not self.lora.is_file():
            raise ServerStartError(f"GGUF LoRA adapter file not found: {self.lora}")
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


# -- the subprocess's entry point ------------------------------------------------------------------------


def fresh_prompt_llama() -> type:
    """A ``llama_cpp.Llama`` subclass whose every request starts from an empty KV cache.

    ``Llama.generate`` (called once per request by ``create_completion``, which chat completions go through
    too) is where llama-cpp-python compares the new prompt with the tokens it evaluated last and keeps the
    KV entries of their longest common prefix.  The subclass calls ``self.reset()`` first (``n_tokens = 0``),
    so that comparison is skipped and the next ``eval`` drops the whole KV cache; nothing else changes, and
    a RAM prompt cache state loaded just before is discarded the same way.
    """
    import llama_cpp

    class FreshPromptLlama(llama_cpp.Llama):
        def generate(self, tokens, *args, **kwargs):
            self.reset()
            return (yield from super().generate(tokens, *args, **kwargs))

    FreshPromptLlama.__name__ = FreshPromptLlama.__qualname__ = "FreshPromptLlama"
    return FreshPromptLlama


def main(argv: list[str] | None = None) -> None:
    """``python -m promptintern.serving.server [--no_prefix_reuse] <llama_cpp.server arguments>``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if NO_PREFIX_REUSE in args:
        args = [a for a in args if a != NO_PREFIX_REUSE]
        import llama_cpp

        llama_cpp.Llama = fresh_prompt_llama()  # llama_cpp.server.model looks the class up at load time
    from llama_cpp.server.__main__ import main as serve

    sys.argv = [sys.argv[0], *args]  # llama-cpp-python's entry point parses sys.argv itself
    serve()


if __name__ == "__main__":
    main()
