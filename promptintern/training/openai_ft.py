"""Progressive fine-tuning through the OpenAI fine-tuning API, for the paper's GPT-3.5 / GPT-4 rows.

The paper fine-tuned GPT-3.5-turbo-0125 and GPT-4-0613 through the API (Table 1). Here each stage's dataset is
written in the chat fine-tuning JSONL format (:func:`write_chat_jsonl`: one ``{"messages": [system?, user,
assistant]}`` object per line, the system turn being the stage's template when it has one) and trained as one
fine-tuning job; stage 1 starts from the base model and stage i from stage i-1's ``fine_tuned_model``
(:func:`run_stages`). Every step is recorded in a small JSON state file, rewritten atomically, so a run that
crashed resumes: a completed stage is skipped, a stage whose job id is recorded is polled rather than
re-created, an uploaded file is not uploaded again (and a job created for it but not yet recorded is adopted
from the job list). The API's ``trained_tokens`` times the dated training price (USD per 1M tokens,
:class:`TrainingPrices`) is the cost, per stage and in total.

A failed job raises :class:`FineTuneError`, one line naming the stage, the job and the API's error message;
polling has an interval and a timeout (:class:`FineTuneTimeout`; rerun to resume polling). Fine-tuned models
are served through chat completions with the paper's decoding (:data:`PAPER_DECODING`,
:class:`PaperChatGenerator`).

The API key is ``api_key`` else ``$OPENAI_API_KEY`` (required for ``api.openai.com``; a local server such as
:class:`~promptintern.serving.openai_stub_server.StubOpenAIServer` takes any); the base URL is ``base_url``
else ``$OPENAI_BASE_URL`` else ``https://api.openai.com/v1``. Plain ``urllib``, like
:mod:`promptintern.serving.openai_backend`.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptintern.io import atomic_write_text, sha256_file, write_json
from promptintern.serving.openai_backend import PAPER_DECODING as BACKEND_DECODING
from promptintern.serving.openai_backend import OpenAIGenerator, ServedPrompt, excerpt, json_object

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: The request fields of the paper's inference runs (Appendix A.2): the sampling settings of
#: :data:`promptintern.serving.openai_backend.PAPER_DECODING` (the OpenAI API's fields) and max tokens 1028.
PAPER_DECODING: dict[str, float | int] = {
    "temperature": BACKEND_DECODING.temperature,
    "top_p": BACKEND_DECODING.top_p,
    "max_tokens": 1028,
    "presence_penalty": BACKEND_DECODING.presence_penalty,
    "frequency_penalty": BACKEND_DECODING.frequency_penalty,
}
STATE_VERSION = 1
TERMINAL_FAILURES = ("failed", "cancelled")
_RETRY_STATUS = (429, 500, 502, 503, 504)


class FineTuneError(RuntimeError):
    """A fine-tuning step failed: a request, a job, the state file or the inputs. The message is one line."""


class FineTuneTimeout(FineTuneError):
    """A job did not finish within the polling timeout; its id is in the state file, rerun to resume polling."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# -- datasets ----------------------------------------------------------------------------------------


def chat_messages(example: Any) -> list[dict[str, str]]:
    """The chat turns of one training example, the answer last.

    Accepted: a :class:`~promptintern.methods.stages.TrainExample` (or any object with ``prompt`` and
    ``answer``), its ``prompt`` a :class:`~promptintern.prompting.prompt.Prompt` (template -> system turn,
    examples + query -> user turn, as the local backends render it) or a string (the user turn); a mapping with
    ``prompt`` / ``answer`` (and optionally ``system``); or an object / mapping with ``messages`` already."""
    get = example.get if isinstance(example, Mapping) else lambda k, d=None: getattr(example, k, d)
    messages = get("messages")
    if messages is not None:
        return [{"role": str(m["role"]), "content": m["content"]} for m in messages]
    prompt, answer = get("prompt"), get("answer")
    if prompt is None or answer is None:
        raise ValueError(f"a training example needs 'prompt' and 'answer' (or 'messages'), got {example!r:.200}")
    if hasattr(prompt, "to_messages"):
        return [dict(m) for m in prompt.to_messages(answer)]
    turns = [{"role": "system", "content": get("system")}] if get("system") else []
    return turns + [{"role": "user", "content": str(prompt)}, {"role": "assistant", "content": str(answer)}]


def check_chat_example(obj: Any) -> str | None:
    """Why ``obj`` (one parsed JSONL line) is not a chat fine-tuning example, or ``None`` when it is: an object
    with a ``messages`` list of ``{"role", "content"}`` (roles system / user / assistant, string contents), at
    most one leading system turn, a user turn, and a non-empty assistant turn last."""
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list) or not obj["messages"]:
        return "expected an object with a non-empty 'messages' list"
    if set(obj) - {"messages"}:
        return f"unexpected key(s) {', '.join(sorted(set(obj) - {'messages'}))}"
    messages = obj["messages"]
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            return f"messages[{i}]: expected exactly 'role' and 'content'"
        if m["role"] not in ("system", "user", "assistant"):
            return f"messages[{i}]: unknown role {m['role']!r}"
        if not isinstance(m["content"], str):
            return f"messages[{i}]: content must be a string"
        if m["role"] == "system" and i != 0:
            return f"messages[{i}]: a system turn may only come first"
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        return "the last turn must be a non-empty assistant answer"
    if not any(m["role"] == "user" for m in messages):
        return "no user turn"
    return None


def write_chat_jsonl(examples: Iterable[Any], path: str | os.PathLike) -> Path:
    """Write ``examples`` (see :func:`chat_messages`) as chat fine-tuning JSONL at ``path``, atomically; every
    line is checked with :func:`check_chat_example` first (``ValueError`` naming the example)."""
    lines = []
    for n, example in enumerate(examples, 1):
        record = {"messages": chat_messages(example)}
        problem = check_chat_example(record)
        if problem:
            name = getattr(example, "id", None) or (example.get("id") if isinstance(example, Mapping) else None)
            raise ValueError(f"example {n}{f' ({name})' if name else ''}: {problem}")
        lines.append(json.dumps(record, ensure_ascii=False))
    if not lines:
        raise ValueError(f"no examples to write to {path}")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def validate_chat_jsonl(path: str | os.PathLike) -> int:
    """Check a chat fine-tuning JSONL file line by line; the number of examples (``ValueError`` on the first
    bad line)."""
    count = 0
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                raise ValueError(f"{path}:{n}: empty line")
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: not JSON: {exc}") from None
            problem = check_chat_example(obj)
            if problem:
                raise ValueError(f"{path}:{n}: {problem}")
            count += 1
    if not count:
        raise ValueError(f"{path}: no examples")
    return count


def write_stage_files(datasets: Sequence[Iterable[Any]], directory: str | os.PathLike) -> list[Path]:
    """Each stage's examples (e.g. ``Experiment.stage_datasets()``) as ``directory/stage-<i>.jsonl``."""
    directory = Path(directory)
    return [write_chat_jsonl(examples, directory / f"stage-{i}.jsonl") for i, examples in enumerate(datasets, 1)]


# -- prices ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingPrices:
    """Fine-tuning training prices, USD per 1M trained tokens, by base model, with their date and source.

    A model is looked up by its exact name, then without an ``openai:`` prefix, then (for a fine-tuned
    ``ft:<base>:...`` model) by its base, then without a trailing ``-MMDD`` date (``gpt-3.5-turbo-0125`` ->
    ``gpt-3.5-turbo``)."""

    per_1m: Mapping[str, float]
    as_of: str = ""
    source: str = ""

    def price(self, model: str) -> float:
        name = model.removeprefix("openai:")
        if name.startswith("ft:"):
            name = name.split(":")[1]
        for candidate in (model, name, re.sub(r"-\d{4}$", "", name)):
            if candidate in self.per_1m:
                value = self.per_1m[candidate]
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise FineTuneError(f"training price of {candidate!r}: expected a non-negative number")
                return float(value)
        known = ", ".join(sorted(self.per_1m)) or "none"
        raise FineTuneError(f"no fine-tuning training price for {model!r} (USD per 1M tokens; known: {known})")


def _prices(prices: TrainingPrices | Mapping[str, float] | None) -> TrainingPrices | None:
    if prices is None or isinstance(prices, TrainingPrices):
        return prices
    return TrainingPrices(dict(prices))


# -- HTTP client -------------------------------------------------------------------------------------


class FineTuneClient:
    """The few OpenAI REST calls fine-tuning needs (files, fine-tuning jobs, chat completions).

    ``base_url``: else ``$OPENAI_BASE_URL`` else ``https://api.openai.com/v1``; ``api_key``: else
    ``$OPENAI_API_KEY`` (required for ``api.openai.com``); ``timeout``: seconds per request; a ``GET`` answered
    429 or 5xx (a ``POST``: 429 only, so that no job is created twice) is retried ``retries`` times,
    ``retry_wait`` seconds apart (doubling)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        *,
        retries: int = 3,
        retry_wait: float = 2.0,
    ):
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY") or None
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        if not self.api_key and (host == "openai.com" or host.endswith(".openai.com")):
            raise FineTuneError(f"OPENAI_API_KEY is not set; {self.base_url} needs an API key")
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.retry_wait = float(retry_wait)

    def _headers(self, content_type: str) -> dict[str, str]:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def request(
        self, method: str, path: str, *, body: Any = None, data: bytes | None = None, content_type: str = ""
    ) -> dict:
        """``method`` ``<base_url><path>`` with a JSON ``body`` (or raw ``data`` of ``content_type``); the JSON
        object answered. Failures raise a one-line :class:`FineTuneError`."""
        url = f"{self.base_url}{path}"
        if body is not None:
            data, content_type = json.dumps(body).encode(), "application/json"
        headers = self._headers(content_type or "application/json")
        wait = self.retry_wait
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                break
            except urllib.error.HTTPError as exc:
                detail = exc.read()
                retry = exc.code == 429 or (method == "GET" and exc.code in _RETRY_STATUS)
                if retry and attempt < self.retries:
                    time.sleep(wait)
                    wait *= 2
                    continue
                raise FineTuneError(f"{method} {url} answered HTTP {exc.code}: {_api_message(detail)}") from None
            except urllib.error.URLError as exc:
                raise FineTuneError(f"cannot reach {url}: {_one_line(exc.reason)}") from None
            except TimeoutError:
                raise FineTuneError(f"{method} {url}: no answer within {self.timeout:g} s") from None
            except (OSError, http.client.HTTPException) as exc:
                raise FineTuneError(f"{method} {url} failed: {_one_line(exc)}") from None
        return json_object(raw, f"{method} {url}", FineTuneError)

    def upload_file(self, path: str | os.PathLike, purpose: str = "fine-tune") -> dict:
        """``POST /files`` (multipart): the file object (``id``)."""
        path = Path(path)
        boundary = f"----promptintern-{uuid.uuid4().hex}"
        content = path.read_bytes()
        name = path.name.replace('"', "_")
        data = b"".join(
            [
                f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'.encode(),
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                "Content-Type: application/jsonl\r\n\r\n".encode(),
                content,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        content_type = f"multipart/form-data; boundary={boundary}"
        answer = self.request("POST", "/files", data=data, content_type=content_type)
        _require(answer, "id", "POST /files")
        return answer

    def create_job(
        self,
        training_file: str,
        model: str,
        *,
        suffix: str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ) -> dict:
        """``POST /fine_tuning/jobs``: the job object (``id``, ``status``)."""
        body: dict[str, Any] = {"training_file": training_file, "model": model}
        if suffix:
            body["suffix"] = suffix
        if hyperparameters:
            body["hyperparameters"] = dict(hyperparameters)
        if seed is not None:
            body["seed"] = int(seed)
        answer = self.request("POST", "/fine_tuning/jobs", body=body)
        _require(answer, "id", "POST /fine_tuning/jobs")
        return answer

    def get_job(self, job_id: str) -> dict:
        """``GET /fine_tuning/jobs/{id}``: the job object."""
        answer = self.request("GET", f"/fine_tuning/jobs/{urllib.parse.quote(job_id, safe='')}")
        _require(answer, "status", f"GET /fine_tuning/jobs/{job_id}")
        return answer

    def list_jobs(self, limit: int = 100) -> list[dict]:
        """``GET /fine_tuning/jobs``: the most recent jobs (one page)."""
        answer = self.request("GET", f"/fine_tuning/jobs?limit={int(limit)}")
        data = answer.get("data")
        return [j for j in data if isinstance(j, dict)] if isinstance(data, list) else []

    def job_events(self, job_id: str, limit: int = 20) -> list[dict]:
        """``GET /fine_tuning/jobs/{id}/events``: the newest events first."""
        quoted = urllib.parse.quote(job_id, safe="")
        answer = self.request("GET", f"/fine_tuning/jobs/{quoted}/events?limit={int(limit)}")
        data = answer.get("data")
        return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []

    def chat(self, model: str, messages: Sequence[Mapping[str, str]], **overrides: Any) -> dict:
        """``POST /chat/completions`` with :data:`PAPER_DECODING` (``overrides`` replace or add fields)."""
        body = {"model": model, "messages": [dict(m) for m in messages], **PAPER_DECODING, **overrides}
        return self.request("POST", "/chat/completions", body=body)


def _api_message(detail: bytes) -> str:
    try:
        error = json.loads(detail).get("error")
        if isinstance(error, dict) and error.get("message"):
            return _one_line(error["message"])
    except (ValueError, AttributeError):
        pass
    return excerpt(detail) or "(empty body)"


def _require(answer: dict, key: str, what: str) -> None:
    if not answer.get(key):
        raise FineTuneError(f"{what}: malformed answer, no {key!r}: {excerpt(json.dumps(answer))}")


# -- stages ------------------------------------------------------------------------------------------


@dataclass
class FineTuneResult:
    """A finished progressive run: the last stage's fine-tuned model and each stage's record (``stage``,
    ``job_id``, ``file_id``, ``model`` (the job's starting model), ``fine_tuned_model``, ``trained_tokens``,
    ``cost_usd``, ...); ``trained_tokens`` and ``cost_usd`` are the totals (``cost_usd`` ``None`` without
    prices)."""

    model_id: str
    base_model: str
    stages: list[dict[str, Any]] = field(default_factory=list)
    trained_tokens: int = 0
    cost_usd: float | None = None
    prices_as_of: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "base_model": self.base_model,
            "trained_tokens": self.trained_tokens,
            "cost_usd": self.cost_usd,
            "prices_as_of": self.prices_as_of,
            "stages": [dict(s) for s in self.stages],
        }


def read_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The state file at ``path``, or ``None`` when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FineTuneError(f"state file {path} is unreadable: {_one_line(exc)}") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise FineTuneError(f"state file {path} is not a version-{STATE_VERSION} fine-tuning state")
    if not isinstance(state.get("stages"), list) or not isinstance(state.get("base_model"), str):
        raise FineTuneError(f"state file {path} is malformed: no 'stages' list or 'base_model'")
    return state


def load_result(state_path: str | os.PathLike) -> FineTuneResult:
    """The :class:`FineTuneResult` of a completed run from its state file (``FineTuneError`` if unfinished)."""
    state = read_state(state_path)
    if state is None or not state.get("model_id"):
        raise FineTuneError(f"{state_path}: the fine-tuning run has not finished (rerun it to resume)")
    return _result(state)


def _result(state: dict[str, Any]) -> FineTuneResult:
    return FineTuneResult(
        model_id=state["model_id"],
        base_model=state["base_model"],
        stages=[dict(s) for s in state["stages"]],
        trained_tokens=int(state.get("trained_tokens") or 0),
        cost_usd=state.get("cost_usd"),
        prices_as_of=state.get("prices_as_of", ""),
    )


def _file_hash(path: Path) -> str:
    if not path.is_file():
        raise FineTuneError(f"stage dataset {path} does not exist")
    return sha256_file(path)


def _job_error(job: dict) -> str:
    error = job.get("error")
    if isinstance(error, dict) and (error.get("message") or error.get("code")):
        code = f" [{error['code']}]" if error.get("code") else ""
        return _one_line(f"{error.get('message') or 'no message'}{code}")
    return "no error message"


def wait_for_job(
    client: FineTuneClient,
    job_id: str,
    *,
    stage: int,
    poll_interval: float = 30.0,
    timeout: float = 24 * 3600.0,
    on_status: Callable[[dict], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict:
    """Poll ``job_id`` (at least once) every ``poll_interval`` s until it succeeds (the job object), fails or
    is cancelled (:class:`FineTuneError`) or ``timeout`` s pass (:class:`FineTuneTimeout`); ``on_status``
    sees every polled job."""
    deadline = clock() + timeout
    while True:
        job = client.get_job(job_id)
        if on_status is not None:
            on_status(job)
        status = job.get("status")
        if status == "succeeded":
            if not job.get("fine_tuned_model"):
                raise FineTuneError(
                    f"fine-tuning stage {stage}: job {job_id} succeeded without a fine_tuned_model"
                )
            return job
        if status in TERMINAL_FAILURES:
            raise FineTuneError(f"fine-tuning stage {stage}: job {job_id} {status}: {_job_error(job)}")
        if clock() >= deadline:
            raise FineTuneTimeout(
                f"fine-tuning stage {stage}: job {job_id} still {status} after {timeout:g} s; "
                "rerun to resume polling it"
            )
        sleep(poll_interval)


def run_stages(
    stage_files: Sequence[str | os.PathLike],
    base_model: str,
    state_path: str | os.PathLike,
    client: FineTuneClient | None = None,
    *,
    poll_interval: float = 30.0,
    timeout: float = 24 * 3600.0,
    prices: TrainingPrices | Mapping[str, float] | None = None,
    suffix: str | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    seed: int | None = None,
    retry_failed: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> FineTuneResult:
    """Fine-tune ``base_model`` on ``stage_files`` in order, one job per stage, each from the previous stage's
    fine-tuned model, resuming from ``state_path`` (see the module docstring).

    ``timeout`` bounds the polling of each stage's job in this call; ``prices`` (USD per 1M trained tokens)
    price each stage's ``trained_tokens`` (a missing price is an error before any job is created; ``None``:
    costs are not computed); ``suffix``, ``hyperparameters`` (e.g. ``{"n_epochs": 3}``) and ``seed`` go to
    every job; ``retry_failed``: a stage whose recorded job failed or was cancelled gets a new job (else the
    failure is raised again). The state file records a different base model or changed stage files as an
    error: delete it (or use another run directory) to start over."""
    client = client if client is not None else FineTuneClient()
    state_path = Path(state_path)
    files = [Path(f) for f in stage_files]
    if not files:
        raise FineTuneError("run_stages needs at least one stage file")
    table = _prices(prices)
    price = table.price(base_model) if table is not None else None
    hashes = [_file_hash(f) for f in files]
    state = read_state(state_path) or {"version": STATE_VERSION, "base_model": base_model, "stages": []}
    if state["base_model"] != base_model:
        raise FineTuneError(
            f"state file {state_path} is for base model {state['base_model']!r}, not {base_model!r}; "
            "delete it or use another run directory"
        )
    if len(state["stages"]) > len(files):
        raise FineTuneError(f"state file {state_path} has {len(state['stages'])} stages, the run {len(files)}")
    for record, digest in zip(state["stages"], hashes, strict=False):
        if record.get("file_sha256") != digest:
            raise FineTuneError(
                f"state file {state_path}: stage {record['stage']}'s dataset changed since its job was "
                "started; delete the state file or use another run directory"
            )
    state.update(base_url=client.base_url, model_id=None)
    if table is not None:
        state["prices_as_of"] = table.as_of

    def save() -> None:
        write_json(state_path, state)

    previous = base_model
    for index, (path, digest) in enumerate(zip(files, hashes, strict=True), 1):
        if index > len(state["stages"]):
            state["stages"].append({"stage": index, "file": str(path), "file_sha256": digest, "file_id": None,
                                    "job_id": None, "model": None, "status": None})  # fmt: skip
        record = state["stages"][index - 1]
        if record.get("status") == "succeeded" and record.get("fine_tuned_model"):
            previous = record["fine_tuned_model"]
            continue
        if record.get("job_id") and record.get("status") in TERMINAL_FAILURES and retry_failed:
            old = {"job_id": record["job_id"], "status": record["status"], "error": record.get("error")}
            record.setdefault("previous_jobs", []).append(old)
            record.update(job_id=None, status=None, error=None)
        if not record.get("job_id"):
            adopted = None
            if record.get("file_id"):  # uploaded in an earlier call: its job may exist but not be recorded
                adopted = next(
                    (j for j in client.list_jobs()
                     if j.get("training_file") == record["file_id"] and j.get("model") == previous
                     and j.get("status") not in TERMINAL_FAILURES),
                    None,
                )  # fmt: skip
            else:
                record["file_id"] = client.upload_file(path)["id"]
                save()
            job = adopted or client.create_job(
                record["file_id"], previous, suffix=suffix, hyperparameters=hyperparameters, seed=seed
            )
            record.update(job_id=job["id"], model=previous, status=job.get("status"))
            save()

        def seen(job: dict, record=record) -> None:
            if job.get("status") != record.get("status"):
                record["status"] = job.get("status")
                if job.get("status") in TERMINAL_FAILURES:
                    record["error"] = _job_error(job)
                save()

        job = wait_for_job(client, record["job_id"], stage=index, poll_interval=poll_interval, timeout=timeout,
                           on_status=seen, sleep=sleep)  # fmt: skip
        tokens = job.get("trained_tokens")
        if isinstance(tokens, bool) or not isinstance(tokens, int | float):
            raise FineTuneError(
                f"fine-tuning stage {index}: job {record['job_id']} succeeded without trained_tokens"
            )
        record.update(
            fine_tuned_model=job["fine_tuned_model"],
            trained_tokens=int(tokens),
            price_per_1m=price,
            cost_usd=None if price is None else round(int(tokens) * price / 1e6, 6),
            status="succeeded",
        )
        save()
        previous = job["fine_tuned_model"]
    costs = [s.get("cost_usd") for s in state["stages"]]
    state.update(
        model_id=previous,
        trained_tokens=sum(int(s["trained_tokens"]) for s in state["stages"]),
        cost_usd=None if any(c is None for c in costs) else round(sum(costs), 6),
    )
    save()
    return _result(state)


def finetune_stage_datasets(
    datasets: Sequence[Iterable[Any]],
    directory: str | os.PathLike,
    base_model: str,
    client: FineTuneClient | None = None,
    **options: Any,
) -> FineTuneResult:
    """Write each stage's examples as ``directory/stage-<i>.jsonl`` and :func:`run_stages` them with the state
    in ``directory/openai-ft.json`` (``options``: :func:`run_stages`' keywords)."""
    directory = Path(directory)
    files = write_stage_files(datasets, directory)
    return run_stages(files, base_model, directory / "openai-ft.json", client, **options)


# -- inference ---------------------------------------------------------------------------------------


class PaperChatGenerator(OpenAIGenerator):
    """:class:`~promptintern.serving.openai_backend.OpenAIGenerator` in chat mode with the paper's decoding
    (:data:`PAPER_DECODING`: temperature 0, top_p 0.95, max_tokens 1028, presence and frequency penalty 0)
    instead of the backend's greedy defaults; ``max_tokens`` replaces the harness' ``max_new_tokens`` (``None``:
    use the harness' budget). Stop strings are sent as the backend does (the answer is cut at them anyway)."""

    def __init__(
        self,
        base_url: str | None,
        model: str,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        max_tokens: int | None = int(PAPER_DECODING["max_tokens"]),
    ):
        base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        super().__init__(base_url, model, api_key, mode="chat", timeout=timeout)
        self.max_tokens = max_tokens
        self.identity = {**self.identity, "decoding": dict(PAPER_DECODING, max_tokens=max_tokens)}

    def request_body(self, prompt: ServedPrompt, *, max_new_tokens: int, stop: Sequence[str] = ()) -> dict:
        body = super().request_body(prompt, max_new_tokens=max_new_tokens, stop=stop)
        body.update(PAPER_DECODING)
        body["max_tokens"] = int(self.max_tokens if self.max_tokens is not None else max_new_tokens)
        return body



# -- the harness's API models (``openai:<model>``) ------------------------------------------------------------

#: Dated fine-tuning training prices (USD per 1K trained tokens), also read by ``promptintern plan``.
FINETUNE_PRICES_FILE = Path(__file__).resolve().parents[1] / "evaluation" / "finetune_prices.yaml"


def training_prices(path: str | os.PathLike = FINETUNE_PRICES_FILE) -> TrainingPrices:
    """The models of ``finetune_prices.yaml`` that have a public training price, per 1M tokens."""
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    per_1m = {name: float(spec["training"]) * 1000 for name, spec in (data.get("models") or {}).items()
              if (spec or {}).get("training") is not None}  # fmt: skip
    return TrainingPrices(per_1m, as_of=str(data.get("as_of", "")), source=" ".join(str(data.get("source", "")).split()))


class ApiTokenizer:
    """What the harness asks of a tokenizer, for an API model: no chat template (prompts go to the API as chat
    messages; :meth:`Prompt.render` then gives the plain text) and cl100k token ids for counting."""

    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        from promptintern.prompting.tokens import tiktoken_encoding

        return {"input_ids": tiktoken_encoding().encode(text, disallowed_special=())}


def train_through_api(exp: Any, datasets: Sequence[Iterable[Any]], directory: Path) -> Path:
    """Fine-tune ``exp``'s API model (``openai:<model>``) on its stage datasets through the fine-tuning API at
    the profile's ``generation.openai`` endpoint (one job per stage, resumable); the state file, which
    :func:`load_result` reads back, stands for the adapter. Costs use :func:`training_prices` where the model has
    a price, else only the trained tokens are recorded."""
    spec = exp.profile.generation_for(exp.task_name).openai
    base = exp.model.removeprefix("openai:")
    prices: TrainingPrices | None = training_prices()
    try:
        prices.price(base)
    except FineTuneError:
        prices = None
    client = FineTuneClient(spec.base_url, os.environ.get(spec.api_key_env))
    finetune_stage_datasets(datasets, directory, base, client, prices=prices, seed=exp.profile.seed,
                            poll_interval=spec.finetune_poll_s)  # fmt: skip
    return directory / "openai-ft.json"


def served_through_api(exp: Any, adapter: Path | None) -> PaperChatGenerator:
    """The chat-completions client of ``exp``'s API model: the fine-tuned model of ``adapter`` (a state file of
    :func:`train_through_api`), else the base model, with the paper's decoding."""
    spec = exp.profile.generation_for(exp.task_name).openai
    model = load_result(adapter).model_id if adapter is not None else exp.model.removeprefix("openai:")
    return PaperChatGenerator(spec.base_url, model, os.environ.get(spec.api_key_env))
