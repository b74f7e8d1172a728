"""An offline OpenAI-compatible server (stdlib ``http.server``) for fine-tuning tests and demos.

:class:`StubOpenAIServer` speaks the parts of the OpenAI REST API that
:mod:`promptintern.training.openai_ft` uses, on 127.0.0.1, with no model behind it:

- ``POST /v1/files``: a multipart upload (``purpose`` = ``fine-tune``, ``file``); the file is kept and checked
  line by line as chat fine-tuning JSONL (``{"messages": [...]}``, the last turn the assistant's).
- ``GET /v1/files/{id}``: the file object.
- ``POST /v1/fine_tuning/jobs``: ``{"training_file", "model", "suffix"?, "hyperparameters"?, "seed"?}``. The
  model must be a base model the server knows (:attr:`StubOpenAIServer.base_models`) or a fine-tuned model of a
  job that succeeded here; otherwise HTTP 404 as the API answers.
- ``GET /v1/fine_tuning/jobs`` (``?limit=&after=``): the jobs, newest first.
- ``GET /v1/fine_tuning/jobs/{id}``: each poll moves the job one step: ``validating_files`` (as created) ->
  ``running`` -> ... -> ``succeeded`` after :attr:`polls_to_succeed` polls, with ``fine_tuned_model``
  (``ft:<root base model>:<org>:<suffix>:<id>``) and ``trained_tokens`` (whitespace tokens of every message
  plus 4 per message, times the epochs). An invalid training file fails the job at its first poll
  (``error.code`` ``invalid_training_file``); :meth:`StubOpenAIServer.fail_job` makes the n-th created job fail.
- ``GET /v1/fine_tuning/jobs/{id}/events``: the job's status changes, newest first.
- ``POST /v1/chat/completions``: a deterministic answer per model (:attr:`answers`: a mapping model -> text or
  a callable ``(model, messages) -> text``; else ``"answer from <model>"``) with ``usage`` (whitespace tokens).

Every request is recorded in :attr:`StubOpenAIServer.requests` (method, path, headers, JSON body or the
multipart form's fields). :meth:`StubOpenAIServer.inject_error` answers the next matching request(s) with an
HTTP error. Any API key is accepted unless ``require_key`` (then a missing ``Authorization`` header is a 401).

Run it for a demo: ``python -m promptintern.serving.openai_stub_server --port 8000``, then point
``OPENAI_BASE_URL`` at ``http://127.0.0.1:8000/v1``.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

LOOPBACK = "127.0.0.1"
#: Models a job may start from without a previous job (the paper's GPT rows and a few more).
BASE_MODELS = (
    "gpt-3.5-turbo",
    "gpt-3.5-turbo-0125",
    "gpt-3.5-turbo-1106",
    "gpt-4-0613",
    "gpt-4o-2024-08-06",
    "gpt-4o-mini-2024-07-18",
    "davinci-002",
    "babbage-002",
)
ROLES = ("system", "user", "assistant")


def count_tokens(text: str) -> int:
    """The stub's token count: whitespace-separated words (deterministic, no tokenizer)."""
    return len(text.split())


def check_chat_line(obj: Any) -> str | None:
    """Why one parsed JSONL line is not a chat fine-tuning example, or ``None`` when it is."""
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list) or not obj["messages"]:
        return "expected an object with a non-empty 'messages' list"
    for i, m in enumerate(obj["messages"]):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return f"messages[{i}]: role must be one of {', '.join(ROLES)}"
        if not isinstance(m.get("content"), str):
            return f"messages[{i}]: content must be a string"
    if obj["messages"][-1]["role"] != "assistant":
        return "the last message must be the assistant's"
    if not any(m["role"] == "user" for m in obj["messages"]):
        return "no user message"
    return None


class StubOpenAIServer:
    """A threaded HTTP server on ``host``:``port`` (0: a free port) faking the OpenAI fine-tuning and chat APIs.

    ``polls_to_succeed``: ``GET`` polls of a job until it has succeeded (at least 1; the first poll reports
    ``running`` when it is 2 or more); ``answers``: the chat answers (see the module docstring); ``org``: the
    organisation in fine-tuned model names; ``require_key``: refuse requests without a bearer key.
    """

    def __init__(
        self,
        host: str = LOOPBACK,
        port: int = 0,
        *,
        polls_to_succeed: int = 2,
        answers: Mapping[str, str] | Callable[[str, list], str] | None = None,
        org: str = "stub-org",
        base_models: Iterable[str] = BASE_MODELS,
        require_key: bool = False,
    ):
        self.polls_to_succeed = max(int(polls_to_succeed), 1)
        self.answers = answers if answers is not None else {}
        self.org = org
        self.base_models = set(base_models)
        self.require_key = require_key
        self.requests: list[dict[str, Any]] = []
        self.files: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self._job_state: dict[str, dict[str, Any]] = {}
        self._failures: dict[int, dict[str, str]] = {}
        self._errors: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._created_jobs = 0
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> StubOpenAIServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> StubOpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- configuration -----------------------------------------------------------------------------
    def fail_job(self, number: int, message: str = "injected failure", code: str = "stub_failure") -> None:
        """Make the ``number``-th job created from now on (1-based, counting all jobs) fail at its first poll."""
        self._failures[self._created_jobs + int(number)] = {"code": code, "message": message}

    def inject_error(
        self, method: str, path_prefix: str, status: int = 500, message: str = "injected error", times: int = 1
    ) -> None:
        """Answer the next ``times`` ``method`` requests whose path starts with ``path_prefix`` (e.g.
        ``/v1/fine_tuning/jobs``) with HTTP ``status`` and an OpenAI-style error body."""
        self._errors.append(
            {"method": method.upper(), "prefix": path_prefix, "status": int(status), "message": message,
             "times": int(times)}
        )  # fmt: skip

    def recorded(self, method: str | None = None, path: str | None = None) -> list[dict[str, Any]]:
        """The recorded requests, optionally only those with this method and exact path (query excluded)."""
        return [
            r
            for r in self.requests
            if (method is None or r["method"] == method.upper()) and (path is None or r["path"] == path)
        ]

    # -- API ---------------------------------------------------------------------------------------
    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-stub{next(self._ids):06d}"

    def _injected(self, method: str, path: str) -> dict[str, Any] | None:
        for e in self._errors:
            if e["times"] > 0 and e["method"] == method and path.startswith(e["prefix"]):
                e["times"] -= 1
                return e
        return None

    def handle(self, method: str, path: str, query: dict, headers: Mapping[str, str], body: Any):
        """``(status, JSON answer)`` for one request (called by the HTTP handler under the server's lock)."""
        if self.require_key and not headers.get("Authorization", "").startswith("Bearer "):
            return _error(401, "You didn't provide an API key.", "invalid_api_key")
        injected = self._injected(method, path)
        if injected is not None:
            return _error(injected["status"], injected["message"], "injected")
        parts = [p for p in path.split("/") if p]
        if parts[:1] != ["v1"]:
            return _error(404, f"Unknown path {path}", "not_found")
        parts = parts[1:]
        if method == "POST" and parts == ["files"]:
            return self._upload(body)
        if method == "GET" and len(parts) == 2 and parts[0] == "files":
            f = self.files.get(parts[1])
            return (200, f["object"]) if f else _error(404, f"No such File object: {parts[1]}", "not_found")
        if parts[:2] == ["fine_tuning", "jobs"]:
            if method == "POST" and len(parts) == 2:
                return self._create_job(body)
            if method == "GET" and len(parts) == 2:
                return self._list_jobs(query)
            if method == "GET" and len(parts) in (3, 4):
                if parts[2] not in self.jobs:
                    return _error(404, f"No fine-tuning job found with id {parts[2]}", "not_found")
                if len(parts) == 3:
                    return 200, self._poll(parts[2])
                if parts[3] == "events":
                    events = list(reversed(self._job_state[parts[2]]["events"]))
                    return 200, {"object": "list", "data": events, "has_more": False}
            if method == "POST" and len(parts) == 4 and parts[3] == "cancel" and parts[2] in self.jobs:
                job = self.jobs[parts[2]]
                if job["status"] not in ("succeeded", "failed", "cancelled"):
                    self._set_status(parts[2], "cancelled")
                return 200, job
        if method == "POST" and parts == ["chat", "completions"]:
            return self._chat(body)
        return _error(404, f"Unknown request {method} {path}", "not_found")

    def _upload(self, form: Any):
        if not isinstance(form, dict) or "file" not in form:
            return _error(400, "a multipart form with a 'file' part is required", "invalid_request_error")
        if form.get("purpose") != "fine-tune":
            return _error(400, f"purpose must be 'fine-tune', got {form.get('purpose')!r}", "invalid_purpose")
        data: bytes = form["file"]["content"]
        file_id = self._new_id("file")
        obj = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": form["file"]["filename"] or "upload.jsonl",
            "purpose": "fine-tune",
        }
        problem, examples, tokens = None, 0, 0
        for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                parsed = json.loads(line)
            except ValueError:
                problem = f"line {n}: not JSON"
                break
            why = check_chat_line(parsed)
            if why:
                problem = f"line {n}: {why}"
                break
            examples += 1
            tokens += sum(count_tokens(m["content"]) + 4 for m in parsed["messages"])
        if problem is None and examples == 0:
            problem = "the file has no examples"
        self.files[file_id] = {"object": obj, "content": data, "examples": examples, "tokens": tokens,
                               "problem": problem}  # fmt: skip
        return 200, obj

    def _known_model(self, model: str) -> bool:
        if model in self.base_models:
            return True
        return any(j["fine_tuned_model"] == model for j in self.jobs.values() if j["status"] == "succeeded")

    def _root(self, model: str) -> str:
        if model.startswith("ft:"):
            return model.split(":")[1]
        return model

    def _create_job(self, body: Any):
        if not isinstance(body, dict):
            return _error(400, "a JSON object body is required", "invalid_request_error")
        training_file, model = body.get("training_file"), body.get("model")
        if training_file not in self.files:
            return _error(400, f"invalid training_file: {training_file}", "invalid_training_file")
        if not isinstance(model, str) or not self._known_model(model):
            return _error(404, f"The model `{model}` does not exist or you do not have access to it.",
                          "model_not_found")  # fmt: skip
        hyper = dict(body.get("hyperparameters") or {})
        epochs = hyper.get("n_epochs", "auto")
        self._created_jobs += 1
        job_id = self._new_id("ftjob")
        job = {
            "id": job_id,
            "object": "fine_tuning.job",
            "model": model,
            "created_at": int(time.time()),
            "finished_at": None,
            "fine_tuned_model": None,
            "organization_id": self.org,
            "result_files": [],
            "status": "validating_files",
            "validation_file": body.get("validation_file"),
            "training_file": training_file,
            "hyperparameters": {"n_epochs": epochs, "batch_size": hyper.get("batch_size", "auto"),
                                "learning_rate_multiplier": hyper.get("learning_rate_multiplier", "auto")},
            "trained_tokens": None,
            "error": None,
            "seed": body.get("seed", 0),
            "suffix": body.get("suffix"),
        }  # fmt: skip
        self.jobs[job_id] = job
        failure = self._failures.pop(self._created_jobs, None)
        self._job_state[job_id] = {"polls": 0, "events": [], "failure": failure}
        self._event(job_id, f"Created fine-tuning job: {job_id}")
        return 200, job

    def _event(self, job_id: str, message: str, level: str = "info") -> None:
        self._job_state[job_id]["events"].append(
            {"object": "fine_tuning.job.event", "id": self._new_id("ftevent"), "created_at": int(time.time()),
             "level": level, "message": message}
        )  # fmt: skip

    def _set_status(self, job_id: str, status: str) -> None:
        job = self.jobs[job_id]
        job["status"] = status
        if status in ("succeeded", "failed", "cancelled"):
            job["finished_at"] = int(time.time())
        self._event(job_id, f"Job status: {status}", "error" if status == "failed" else "info")

    def _poll(self, job_id: str) -> dict[str, Any]:
        job, state = self.jobs[job_id], self._job_state[job_id]
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        state["polls"] += 1
        file = self.files[job["training_file"]]
        if file["problem"] or state["failure"]:
            error = state["failure"] or {
                "code": "invalid_training_file",
                "message": f"The job failed due to an invalid training file. {file['problem']}",
            }
            job["error"] = {"code": error["code"], "message": error["message"], "param": "training_file"}
            self._set_status(job_id, "failed")
        elif state["polls"] >= self.polls_to_succeed:
            epochs = job["hyperparameters"]["n_epochs"]
            epochs = 3 if epochs == "auto" else int(epochs)
            job["hyperparameters"]["n_epochs"] = epochs
            job["trained_tokens"] = file["tokens"] * epochs
            suffix = job["suffix"] or ""
            job["fine_tuned_model"] = f"ft:{self._root(job['model'])}:{self.org}:{suffix}:{job_id.split('-')[-1]}"
            self._set_status(job_id, "succeeded")
        elif job["status"] != "running":
            self._set_status(job_id, "running")
        return job

    def _list_jobs(self, query: dict):
        jobs = list(reversed(list(self.jobs.values())))
        after = query.get("after", [None])[0]
        if after in self.jobs:
            jobs = jobs[[j["id"] for j in jobs].index(after) + 1 :]
        limit = int(query.get("limit", ["20"])[0])
        return 200, {"object": "list", "data": jobs[:limit], "has_more": len(jobs) > limit}

    def _chat(self, body: Any):
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error(400, "'messages' is required", "invalid_request_error")
        model = body.get("model")
        if not isinstance(model, str) or not self._known_model(model):
            return _error(404, f"The model `{model}` does not exist or you do not have access to it.",
                          "model_not_found")  # fmt: skip
        messages = body["messages"]
        if callable(self.answers):
            text = self.answers(model, messages)
        else:
            text = self.answers.get(model, f"answer from {model}")
        prompt_tokens = sum(count_tokens(str(m.get("content", ""))) + 4 for m in messages if isinstance(m, dict))
        completion_tokens = count_tokens(text)
        return 200, {
            "id": self._new_id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }  # fmt: skip


def _error(status: int, message: str, code: str) -> tuple[int, dict]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return status, {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _parse_multipart(content_type: str, data: bytes) -> dict[str, Any]:
    """The fields of a ``multipart/form-data`` body: text parts as strings, file parts as
    ``{"filename", "content"}``."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + data
    )
    fields: dict[str, Any] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None or name == "file":
            fields[name] = {"filename": filename, "content": payload}
        else:
            fields[name] = payload.decode("utf-8", "replace")
    return fields


def _handler(server: StubOpenAIServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            content_type = self.headers.get("Content-Type", "")
            body: Any = None
            if content_type.startswith("multipart/form-data"):
                body = _parse_multipart(content_type, raw)
                logged = {
                    k: {"filename": v["filename"], "bytes": len(v["content"])} if isinstance(v, dict) else v
                    for k, v in body.items()
                }
            elif raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                logged = body
            else:
                logged = None
            headers = dict(self.headers.items())
            with server._lock:
                server.requests.append({"method": method, "path": url.path, "query": url.query,
                                        "headers": headers, "body": logged})  # fmt: skip
                if body is None and raw:
                    status, answer = _error(400, "the body is not valid JSON", "invalid_json")
                else:
                    status, answer = server.handle(method, url.path, parse_qs(url.query), headers, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            self._serve("GET")

        def do_POST(self):  # noqa: N802
            self._serve("POST")

        def log_message(self, *args):
            pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--polls", type=int, default=2, help="polls until a job has succeeded")
    args = parser.parse_args(argv)
    server = StubOpenAIServer(args.host, args.port, polls_to_succeed=args.polls)
    print(f"stub OpenAI API at {server.base_url} (Ctrl-C to stop)", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


if __name__ == "__main__":
    main()
