"""Table-8 latency: the interleaved request order, summaries, parsing a stream, and a real run with two servers
over the embedded GGUF."""

from __future__ import annotations

import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_serving_server import needs_embedded, needs_llama  # noqa: E402 (one definition of the skips)

from promptintern.serving import latency
from promptintern.serving.latency import (
    LatencyConfig,
    LatencyError,
    RequestTiming,
    measure_latency,
    request_order,
    stream_completion,
    summarize,
)


def test_request_order_interleaves_instances_and_rotates_the_configs():
    assert request_order(3, 4) == [
        (0, 0), (0, 1), (0, 2),
        (1, 1), (1, 2), (1, 0),
        (2, 2), (2, 0), (2, 1),
        (3, 0), (3, 1), (3, 2),
    ]  # fmt: skip
    order = request_order(2, 6)
    assert [c for _, c in order[::2]] == [0, 1, 0, 1, 0, 1]  # each config leads every other instance
    assert sorted(order) == [(i, c) for i in range(6) for c in range(2)]  # every pair exactly once
    assert request_order(1, 2) == [(0, 0), (1, 0)]


def _timing(config, instance, total, ttft, tokens, input_tokens=None):
    tpot = (total - ttft) / (tokens - 1) if tokens > 1 else None
    return RequestTiming(config, instance, 0, ttft, total, tokens, tpot, input_tokens, "length", "x")


def test_summarize_means_medians_and_missing_tpot():
    timings = {
        "a": [
            _timing("a", 0, 1.0, 0.5, 6, 100),
            _timing("a", 1, 2.0, 1.0, 3, 120),
            _timing("a", 2, 6.0, 0.5, 1),
        ],
        "b": [_timing("b", 0, 0.4, 0.1, 4)],
    }
    summary = summarize(timings)
    a = summary["a"]
    assert a["n"] == 3 and a["n_tpot"] == 2
    assert a["total_s"] == {"mean": 3.0, "median": 2.0}
    assert a["ttft_s"]["mean"] == pytest.approx(2 / 3) and a["ttft_s"]["median"] == 0.5
    assert a["tpot_s"]["mean"] == pytest.approx((0.1 + 0.5) / 2) and a["tpot_s"]["median"] == pytest.approx(
        0.3
    )
    assert a["mean_output_tokens"] == pytest.approx(10 / 3) and a["mean_input_tokens"] == 110
    assert summary["b"]["tpot_s"]["mean"] == pytest.approx(0.1) and summary["b"]["mean_input_tokens"] is None
    assert summarize({"c": []})["c"]["total_s"] == {"mean": None, "median": None}


def test_configs_must_agree_on_the_instances(tmp_path):
    one = LatencyConfig("a", tmp_path / "m.gguf", prompts=["p1", "p2"])
    with pytest.raises(ValueError, match="same, non-zero number of prompts: \\[2, 1\\]"):
        measure_latency([one, LatencyConfig("b", tmp_path / "m.gguf", prompts=["p1"])], max_tokens=1)
    with pytest.raises(ValueError, match="names must differ"):
        measure_latency([one, one], max_tokens=1)
    with pytest.raises(TypeError):
        LatencyConfig("a", tmp_path / "m.gguf", None, prompts=["p"])  # lora etc. are keyword-only


class SSEStub:
    """Serves one canned event stream (``(delay_s, line)`` pairs) for every POST and records the bodies."""

    def __init__(self, events):
        stub, self.bodies = self, []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                import json

                stub.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for delay, line in events:
                    time.sleep(delay)
                    data = line.encode() + b"\n\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def output_tail(self, chars=300):
        return "(stub)"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _chunk(text, finish=None):
    import json

    return "data: " + json.dumps({"choices": [{"text": text, "index": 0, "finish_reason": finish}]})


def test_stream_parsing_ttft_token_chunks_and_finish():
    events = [
        (0.0, ": ping - comment lines are skipped"),
        (0.0, _chunk("")),  # a token that decodes to nothing: counted, but not the first text
        (0.3, _chunk("ls")),
        (0.1, _chunk(" -l")),
        (0.1, _chunk("")),  # the token that completed a stop string
        (0.0, _chunk("", "stop")),
        (0.0, "data: [DONE]"),
    ]
    stub = SSEStub(events)
    try:
        ttft, total, chunks, finish, text = stream_completion(stub, "PROMPT", max_tokens=9, stop=["\n"])
    finally:
        stub.close()
    assert stub.bodies == [
        {
            "prompt": "PROMPT",
            "max_tokens": 9,
            "temperature": 0.0,
            "top_p": 1.0,
            "stream": True,
            "repeat_penalty": 1.0,  # llama-cpp-python's server applies 1.1 unless told: greedy needs 1
            "stop": ["\n"],
        }
    ]
    assert 0.3 <= ttft < 0.4 <= total
    assert (chunks, finish, text) == (4, "stop", "ls -l")


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([(0.0, "data: {not json"), (0.0, "data: [DONE]")], "malformed stream"),
        ([(0.0, 'data: {"choices": []}')], "malformed stream"),
        ([(0.0, "data: [DONE]")], "ended without a chunk"),
    ],
)
def test_broken_streams_raise_latency_error(events, message):
    stub = SSEStub(events)
    try:
        with pytest.raises(LatencyError, match=message):
            stream_completion(stub, "p", max_tokens=1)
    finally:
        stub.close()


@needs_llama
@needs_embedded
def test_real_run_interleaves_two_servers_and_stops_them(monkeypatch):
    """2 configurations x 2 short prompts x 4 tokens on the embedded GGUF (~5 s)."""
    from promptintern.serving.models import embedded_gguf_path

    started = []

    class Recorded(latency.LocalOpenAIServer):
        def start(self):
            started.append(self)
            return super().start()

    monkeypatch.setattr(latency, "LocalOpenAIServer", Recorded)
    sent = []
    plain_stream = latency.stream_completion

    def recorded_stream(server, prompt, **kwargs):
        sent.append((server.model_alias, prompt))
        return plain_stream(server, prompt, **kwargs)

    monkeypatch.setattr(latency, "stream_completion", recorded_stream)
    prompts = [
        f"<|im_start|>system\nAnswer with one bash command.<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n"
        "<|im_start|>assistant\n"
        for q in ("List all files.", "Count the lines of a.txt.")
    ]
    gguf = embedded_gguf_path()
    configs = [
        LatencyConfig("full", gguf, prompts=prompts),
        LatencyConfig(
            "cached", gguf, prompts=[p.replace("bash", "shell") for p in prompts], prefix_reuse=True
        ),
    ]
    timings = measure_latency(configs, max_tokens=4, n_threads=2, n_ctx=512, warmup=1)

    # warm-up: each server's last prompt, then instance 0 full->cached, instance 1 cached->full
    assert sent == [
        ("full", prompts[1]),
        ("cached", configs[1].prompts[1]),
        ("full", prompts[0]),
        ("cached", configs[1].prompts[0]),
        ("cached", configs[1].prompts[1]),
        ("full", prompts[1]),
    ]
    assert [(t.instance, t.sequence) for t in timings["full"]] == [(0, 0), (1, 3)]
    assert [(t.instance, t.sequence) for t in timings["cached"]] == [(0, 1), (1, 2)]
    for row in timings["full"] + timings["cached"]:
        assert 0 < row.ttft_s <= row.total_s < 30
        assert 1 <= row.output_tokens <= 4 and row.finish_reason in ("length", "stop") and row.text
        assert row.input_tokens > 20
        assert row.tpot_s is None if row.output_tokens == 1 else row.tpot_s > 0
    assert (
        timings["full"][0].input_tokens + 4 == timings["full"][1].input_tokens
    )  # "Count the lines of a.txt."
    assert [s.prefix_reuse for s in started] == [False, True]
    assert all(not s.running and s.process is None for s in started)
    summary = summarize(timings)
    assert summary["full"]["n"] == 2
    assert summary["full"]["total_s"]["mean"] == statistics.fmean(t.total_s for t in timings["full"])


@needs_llama
@needs_embedded
def test_servers_are_stopped_when_a_start_fails(monkeypatch, tmp_path):
    from promptintern.serving.models import embedded_gguf_path
    from promptintern.serving.server import ServerStartError

    started, processes = [], []

    class Recorded(latency.LocalOpenAIServer):
        def start(self):
            started.append(self)
            super().start()
            processes.append(self.process)
            return self

    monkeypatch.setattr(latency, "LocalOpenAIServer", Recorded)
    configs = [
        LatencyConfig("ok", embedded_gguf_path(), prompts=["p"]),
        LatencyConfig("missing", tmp_path / "missing.gguf", prompts=["p"]),
    ]
    with pytest.raises(ServerStartError, match="not found"):
        measure_latency(configs, max_tokens=1, n_ctx=256)
    assert len(started) == 2 and len(processes) == 1  # the first server ran, the second never started
    assert processes[0].poll() is not None and all(s.process is None for s in started)
