"""Table 8 through the server: which rows a server can serve, the cache of measurements, the stored fields."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from promptintern.harness import latency_table
from promptintern.harness.experiment import Experiment
from promptintern.profile import load_profile
from promptintern.serving.latency import LatencyConfig, RequestTiming


def _timing(config: str, instance: int, total: float, ttft: float, tokens: int) -> RequestTiming:
    tpot = (total - ttft) / (tokens - 1) if tokens > 1 else None
    return RequestTiming(config, instance, instance, ttft, total, tokens, tpot, 100, "stop", "x")


def test_rows_a_server_cannot_serve_get_a_reason(tiny_model_dir):
    smoke = load_profile("smoke")
    gist = Experiment("nl2bash", "gist", smoke)
    assert "own loop" in latency_table._config("gist", gist, 2)
    tiny = Experiment("nl2bash", "zero-shot", smoke, model=str(tiny_model_dir))
    assert "GGUF" in latency_table._config("zero-shot", tiny, 2)


def test_prefix_cached_rows_reuse_the_prefix_and_the_others_do_not():
    pytest.importorskip("llama_cpp")
    smoke = load_profile("smoke")
    cached = latency_table._config("pc", Experiment("nl2bash", "prefix-cached", smoke), 2)
    plain = latency_table._config("zs", Experiment("nl2bash", "zero-shot-full", smoke), 2)
    assert cached.prefix_reuse and not plain.prefix_reuse and cached.lora is None
    assert cached.prompts == plain.prompts and len(plain.prompts) == 2  # the same full prompts, 2 instances
    assert plain.prompts[0].startswith("<|im_start|>") and plain.prompts[0].endswith("assistant\n")


def test_measurements_are_cached_by_content_and_become_row_fields(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"gguf")
    prompts = ["p1", "p2"]
    built = {"a": LatencyConfig("a", gguf, prompts=prompts), "b": LatencyConfig("b", gguf, prompts=prompts)}
    monkeypatch.setattr(
        latency_table, "_config", lambda name, exp, n: built[name] if name in built else "no server"
    )
    calls = []

    def fake_measure(cfgs, *, max_tokens, stop, progress):
        calls.append([c.name for c in cfgs])
        return {
            "a": [_timing("a", 0, 2.0, 1.0, 11), _timing("a", 1, 4.0, 2.0, 21)],
            "b": [_timing("b", 0, 0.5, 0.1, 5), _timing("b", 1, 0.5, 0.1, 1)],
        }

    monkeypatch.setattr("promptintern.serving.latency.measure_latency", fake_measure)
    exp = SimpleNamespace(max_new_tokens=16, task=SimpleNamespace(stop=("\n",)))
    rows = {"a": exp, "b": exp, "gist": exp}
    first = latency_table.measure_task("nl2bash", rows, 2, progress=False)
    again = latency_table.measure_task("nl2bash", rows, 2, progress=False)
    assert calls == [["a", "b"]] and first == again  # the second call is served from the cache
    saved = json.loads(open(first["a"]["file"]).read())
    assert saved["max_tokens"] == 16 and saved["stop"] == ["\n"] and len(saved["requests"]["a"]) == 2
    fields = latency_table.row_fields(first["a"])
    assert fields["latency_s_mean"] == pytest.approx(3.0) and fields["ttft_s_mean"] == pytest.approx(1.5)
    assert fields["tpot_s_mean"] == pytest.approx(0.1) and fields["latency_output_tokens_mean"] == 16.0
    assert fields["latency_source"] == "server" and fields["latency_n"] == 2
    assert latency_table.row_fields(first["gist"]) == {
        "latency_s_mean": None,
        "latency_source": "not measured: no server",
    }
