"""Every baseline as a method of the experiment runner: CLI train/generate on the smoke profile, schedules,
question-aware compression, unavailable baselines and what the scores record."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from promptintern.baselines import COMPRESSION_BASELINES, DIRECT_FT, ZERO_SHOT, BaselineUnavailable
from promptintern.cli import app
from promptintern.compress.lingua import LLMLINGUA2_ENV
from promptintern.harness.experiment import METHODS, Experiment
from promptintern.profile import load_profile
from promptintern.tasks import Template, get_task

runner = CliRunner()
TASK = "nl2bash"


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


SHORT_TEMPLATE = Template(
    "Translate the request into one bash command. Output only the command, on one line.\n"
    "Use standard GNU utilities and quote file names that contain spaces.",
    "<API Doc 1> find PATH -name PATTERN: search for files whose name matches PATTERN.\n\n"
    "<API Doc 2> grep -r PATTERN DIR: print the lines of files under DIR that match PATTERN.\n\n"
    "<API Doc 3> wc -l FILE: count the lines of FILE.",
)


@pytest.fixture(autouse=True)
def short_template(monkeypatch):
    """A short NL2Bash template: the character-level tiny model reads the real 11k-character one slowly."""
    monkeypatch.setattr(type(get_task(TASK)), "template", lambda self: SHORT_TEMPLATE)


@pytest.fixture()
def smoke():
    return load_profile("smoke")


class _FakeOpenAI(BaseHTTPRequestHandler):
    """chat.completions that answers with the first words of the user message (a word subsequence)."""

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        words = body["messages"][-1]["content"].split()
        answer = " ".join(words[: max(1, len(words) // 4)])
        reply = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": len(words), "completion_tokens": 1, "total_tokens": len(words) + 1},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_openai(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("PROMPTINTERN_OPENAI_BASE_URL", f"http://127.0.0.1:{server.server_port}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    yield server
    server.shutdown()


@pytest.fixture()
def method_env(request, tiny_bert_dir, monkeypatch):
    """What each method needs from the environment (a checkpoint for LLMLingua-2, an endpoint for gpt4-gen)."""
    method = request.param
    if method == "llmlingua2":
        monkeypatch.setenv(LLMLINGUA2_ENV, str(tiny_bert_dir))
    if method == "gpt4-generation":
        request.getfixturevalue("fake_openai")
    return method


@pytest.mark.parametrize("method_env", METHODS, indirect=True)
def test_train_then_generate_every_method_from_the_cli(method_env, tiny_model_dir, tmp_path):
    method = method_env
    common = ["--task", TASK, "--method", method, "--profile", "smoke", "--model", tiny_model_dir]
    res = _cli("train", *common)
    assert res.exit_code == 0, res.output
    trains = method not in ZERO_SHOT
    assert ("adapter" in res.stdout) == trains and ("has no training" in res.stdout) != trains
    out = tmp_path / "preds.jsonl"
    res = _cli("generate", *common, "--out", out)
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 3 and all(r["input_tokens"] > 0 and r["latency_s"] >= 0 for r in recs)


def test_methods_cover_every_baseline():
    assert set(COMPRESSION_BASELINES) | set(DIRECT_FT) | {"gist", "zero-shot", "zero-shot-full"} < set(METHODS)


def test_compression_baseline_trains_and_serves_one_compressed_template(smoke, tiny_model_dir):
    exp = Experiment(TASK, "llmlingua", smoke, model=str(tiny_model_dir))
    plans = exp.plans
    assert [(p.tau, p.shots) for p in plans] == [(0.3, 1)] * smoke.method.stages
    assert len({p.template for p in plans}) == 1  # compressed once, the same at every stage
    template = plans[0].template
    assert template.documents == "" and 0 < len(template.instruction) < len(exp.task.template().text)
    served = exp.inference_prompts()[0]
    trained = exp.stage_datasets()[-1][0].prompt
    assert served.template == trained.template == template.instruction
    assert len(served.examples) == len(trained.examples) == 1
    assert exp.settings()["baseline"] == {"compressor": "llmlingua", "options": {"model": str(tiny_model_dir)}}


def test_longllmlingua_compresses_the_template_per_query(smoke, tiny_model_dir):
    exp = Experiment(TASK, "longllmlingua", smoke, model=str(tiny_model_dir))
    assert exp.question_aware and all(p.template is None for p in exp.plans)
    per_test = exp.instance_templates(exp.test_set)
    assert set(per_test) == {i.id for i in exp.test_set}
    assert len({c.template for c in per_test.values()}) > 1  # the question changes what is kept
    prompts = exp.inference_prompts()
    for inst, prompt in zip(exp.test_set, prompts, strict=True):
        assert prompt.template == per_test[inst.id].template.instruction
    train = exp.stage_datasets()
    first = {ex.id: ex.prompt.template for ex in train[0]}
    assert all(first[ex.id] == ex.prompt.template for stage in train for ex in stage)
    stats = exp.compression_stats()
    rates = [c.rate_achieved for c in per_test.values()]
    assert stats["rate_requested"] == 0.3 and stats["rate_achieved"] == pytest.approx(sum(rates) / len(rates))


def test_llmlingua2_without_checkpoint_is_marked_not_run(smoke, tiny_model_dir, monkeypatch):
    monkeypatch.delenv(LLMLINGUA2_ENV, raising=False)
    exp = Experiment(TASK, "llmlingua2", smoke, model=str(tiny_model_dir))
    reason = exp.unavailable()
    assert reason and "token-classification checkpoint" in reason and LLMLINGUA2_ENV in reason
    with pytest.raises(BaselineUnavailable):
        exp.compressor()
    assert Experiment(TASK, "llmlingua", smoke, model=str(tiny_model_dir)).unavailable() is None
    res = runner.invoke(
        app, ["train", "--task", TASK, "--method", "llmlingua2", "--profile", "smoke", "--model", tiny_model_dir]
    )
    assert res.exit_code == 2 and "token-classification checkpoint" in res.stderr  # one line, no traceback
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_scores_record_rates_tokens_and_wall_time(smoke, tiny_model_dir):
    exp = Experiment(TASK, "llmlingua", smoke, model=str(tiny_model_dir))
    result = exp.evaluate(progress=False)
    assert result["template"]["rate_requested"] == 0.3
    assert 0.0 < result["template"]["rate_achieved"] < 1.0
    assert result["input_tokens_mean"] > 0
    assert {"compress", "train", "generate"} <= set(result["timings_s"])
    assert all(v >= 0 for v in result["timings_s"].values())
    full = Experiment(TASK, "zero-shot-full", smoke, model=str(tiny_model_dir)).evaluate(progress=False)
    assert full["template"] == {"rate_requested": 1.0, "rate_achieved": 1.0, "shots": 2}
    assert full["input_tokens_mean"] > result["input_tokens_mean"]


def test_prefix_cached_serves_the_full_prompt_with_the_same_output(smoke, tiny_model_dir):
    def records(method):
        path = Experiment(TASK, method, smoke, model=str(tiny_model_dir)).predict(progress=False)
        return [json.loads(line) for line in path.read_text().splitlines()]

    plain, cached = records("zero-shot-full"), records("prefix-cached")
    assert [r["output"] for r in cached] == [r["output"] for r in plain]
    assert [r["input_tokens"] for r in cached] == [r["input_tokens"] for r in plain]
    assert all(0 < r["cached_tokens"] < r["input_tokens"] for r in cached)


def test_compressor_options_take_the_runs_model(smoke):
    exp = Experiment(TASK, "selective-context", smoke, model="/some/model")
    assert exp.compressor_options() == {"model": "/some/model", "level": "sentence"}
    cpu = Experiment(TASK, "selective-context", load_profile("cpu"))
    assert cpu.compressor_options()["model"] == "embedded"
