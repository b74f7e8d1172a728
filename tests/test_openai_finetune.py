"""OpenAI fine-tuning of the GPT rows (:mod:`promptintern.training.openai_ft`) against the stub OpenAI server
(:mod:`promptintern.serving.openai_stub_server`) on 127.0.0.1: chat JSONL, chained stage jobs, failures,
crash-and-resume from the state file, trained tokens and cost, and the paper's decoding settings."""

from __future__ import annotations

import json

import pytest

from promptintern.methods.stages import TrainExample
from promptintern.prompting.prompt import Prompt
from promptintern.serving.openai_backend import ServedPrompt
from promptintern.serving.openai_stub_server import StubOpenAIServer
from promptintern.training.openai_ft import (
    PAPER_DECODING,
    FineTuneClient,
    FineTuneError,
    FineTuneTimeout,
    PaperChatGenerator,
    TrainingPrices,
    finetune_stage_datasets,
    load_result,
    read_state,
    run_stages,
    validate_chat_jsonl,
    write_chat_jsonl,
    write_stage_files,
)

BASE = "gpt-3.5-turbo-0125"
PRICES = TrainingPrices({"gpt-3.5-turbo": 8.0, "gpt-4-0613": 90.0}, as_of="2024-07-01")
INSTRUCTION = "You are a shell programmer. Translate the request into one bash command."
DOCS = "<API Doc 1> ls: list directory contents"
SHOTS = ("[NL] show disk usage [/NL]\ndu -sh .", "[NL] count lines in a.txt [/NL]\nwc -l a.txt")
QUERIES = [("find-py", "[NL] find python files [/NL]", "find . -name '*.py'"),
           ("list-all", "[NL] list all files [/NL]", "ls -a"),
           ("cwd", "[NL] print the working directory [/NL]", "pwd")]  # fmt: skip


def stage_datasets() -> list[list[TrainExample]]:
    """Three stages as PromptIntern builds them: full template + 2 shots, template + 1 shot, query only."""
    stages = [(INSTRUCTION, DOCS, SHOTS), (INSTRUCTION, "", SHOTS[:1]), ("", "", ())]
    return [
        [TrainExample(i, Prompt(q, instruction, docs, shots), a) for i, q, a in QUERIES]
        for instruction, docs, shots in stages
    ]


@pytest.fixture
def server():
    with StubOpenAIServer(polls_to_succeed=2) as srv:
        yield srv


@pytest.fixture
def client(server, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return FineTuneClient(server.base_url, api_key="sk-test", timeout=5, retry_wait=0)


@pytest.fixture
def stage_files(tmp_path):
    return write_stage_files(stage_datasets(), tmp_path / "data")


def created_jobs(server) -> list[dict]:
    return [r["body"] for r in server.recorded("POST", "/v1/fine_tuning/jobs")]


def run(files, state, client, **kw):
    kw = {"poll_interval": 0, "timeout": 5, "prices": PRICES} | kw
    return run_stages(files, BASE, state, client, **kw)


# -- JSONL ---------------------------------------------------------------------------------------------


def test_stage_files_are_chat_fine_tuning_jsonl(stage_files):
    datasets = stage_datasets()
    assert [p.name for p in stage_files] == ["stage-1.jsonl", "stage-2.jsonl", "stage-3.jsonl"]
    for path, examples in zip(stage_files, datasets, strict=True):
        lines = path.read_text(encoding="utf-8").splitlines()
        assert len(lines) == len(examples)
        for line, ex in zip(lines, examples, strict=True):
            obj = json.loads(line)
            assert list(obj) == ["messages"]
            roles = [m["role"] for m in obj["messages"]]
            assert all(set(m) == {"role", "content"} for m in obj["messages"])
            if ex.prompt.template:
                assert roles == ["system", "user", "assistant"]
                assert obj["messages"][0]["content"] == ex.prompt.template
            else:
                assert roles == ["user", "assistant"]
            assert obj["messages"][-2]["content"] == ex.prompt.user
            assert obj["messages"][-1]["content"] == ex.answer
        assert validate_chat_jsonl(path) == len(examples)
    stage1 = json.loads(stage_files[0].read_text().splitlines()[0])["messages"]
    assert DOCS in stage1[0]["content"] and SHOTS[0] in stage1[1]["content"]
    stage3 = json.loads(stage_files[2].read_text().splitlines()[0])["messages"]
    assert stage3 == [{"role": "user", "content": QUERIES[0][1]}, {"role": "assistant", "content": QUERIES[0][2]}]


def test_jsonl_accepts_mappings_and_rejects_bad_examples(tmp_path):
    path = write_chat_jsonl([{"prompt": "q", "answer": "a", "system": "s"}, {"prompt": "q2", "answer": "a2"}],
                            tmp_path / "m.jsonl")  # fmt: skip
    rows = [json.loads(line)["messages"] for line in path.read_text().splitlines()]
    assert [[m["role"] for m in r] for r in rows] == [["system", "user", "assistant"], ["user", "assistant"]]
    with pytest.raises(ValueError, match=r"example 1 \(x\).*assistant"):
        write_chat_jsonl([TrainExample("x", Prompt("q"), "  ")], tmp_path / "bad.jsonl")
    assert not (tmp_path / "bad.jsonl").exists()
    bad = tmp_path / "bad2.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
                   '{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}\n')
    with pytest.raises(ValueError, match=r"bad2.jsonl:2: the last turn"):
        validate_chat_jsonl(bad)


# -- stages --------------------------------------------------------------------------------------------


def test_three_stages_chain_each_job_from_the_previous_model(server, client, stage_files, tmp_path):
    state = tmp_path / "run" / "openai-ft.json"
    result = run(stage_files, state, client)

    uploads = server.recorded("POST", "/v1/files")
    assert [u["body"]["purpose"] for u in uploads] == ["fine-tune"] * 3
    assert [u["body"]["file"]["filename"] for u in uploads] == [p.name for p in stage_files]
    assert [f["content"] for f in server.files.values()] == [p.read_bytes() for p in stage_files]
    assert all(u["headers"]["Authorization"] == "Bearer sk-test" for u in server.requests)

    jobs = created_jobs(server)
    server_jobs = list(server.jobs.values())
    assert [j["training_file"] for j in jobs] == list(server.files)
    assert jobs[0]["model"] == BASE
    assert jobs[1]["model"] == server_jobs[0]["fine_tuned_model"]
    assert jobs[2]["model"] == server_jobs[1]["fine_tuned_model"]
    assert all(j["status"] == "succeeded" for j in server_jobs)
    assert result.model_id == server_jobs[2]["fine_tuned_model"]
    assert result.model_id.startswith(f"ft:{BASE}:")

    tokens = [j["trained_tokens"] for j in server_jobs]
    assert tokens[0] > tokens[1] > tokens[2] > 0  # the prompts shrink stage by stage
    assert [s["trained_tokens"] for s in result.stages] == tokens
    assert result.trained_tokens == sum(tokens)
    assert [s["cost_usd"] for s in result.stages] == pytest.approx([t * 8.0 / 1e6 for t in tokens])
    assert result.cost_usd == pytest.approx(sum(tokens) * 8.0 / 1e6)
    assert [(s["stage"], s["job_id"], s["file_id"]) for s in result.stages] == [
        (i, j["id"], j["training_file"]) for i, j in enumerate(server_jobs, 1)
    ]
    saved = read_state(state)
    assert saved["model_id"] == result.model_id and saved["prices_as_of"] == "2024-07-01"
    assert load_result(state).to_dict() == result.to_dict()

    server.requests.clear()  # a completed run is not trained again
    again = run(stage_files, state, client)
    assert again.model_id == result.model_id
    assert server.requests == []


def test_failed_job_raises_one_line_error_and_is_polled_not_recreated(server, client, stage_files, tmp_path):
    state = tmp_path / "state.json"
    server.fail_job(2, message="Training file has too few examples.\nSee the docs.", code="too_few_examples")
    with pytest.raises(FineTuneError) as info:
        run(stage_files, state, client)
    job_id = list(server.jobs)[1]
    message = str(info.value)
    assert "\n" not in message
    assert "stage 2" in message and job_id in message and "failed" in message
    assert "Training file has too few examples. See the docs." in message and "too_few_examples" in message
    assert len(created_jobs(server)) == 2
    assert read_state(state)["stages"][1]["status"] == "failed"

    with pytest.raises(FineTuneError, match=f"stage 2: job {job_id} failed"):
        run(stage_files, state, client)
    assert len(created_jobs(server)) == 2  # the recorded job is polled again, not replaced

    result = run(stage_files, state, client, retry_failed=True)
    jobs = created_jobs(server)
    assert len(jobs) == 4
    assert jobs[2]["model"] == list(server.jobs.values())[0]["fine_tuned_model"]
    assert len(server.recorded("POST", "/v1/files")) == 3  # stage 2's file is reused
    assert result.stages[1]["previous_jobs"][0]["job_id"] == job_id
    assert result.model_id == list(server.jobs.values())[-1]["fine_tuned_model"]


def test_invalid_training_file_fails_the_job_with_the_api_message(server, client, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    with pytest.raises(FineTuneError, match=r"stage 1: job ftjob-\S+ failed: .*invalid training file"):
        run([bad], tmp_path / "state.json", client)


def test_crash_and_resume_creates_no_job_twice(server, client, stage_files, tmp_path):
    state = tmp_path / "state.json"
    with pytest.raises(FineTuneTimeout, match="stage 1"):  # one poll: running
        run(stage_files, state, client, timeout=0)
    with pytest.raises(FineTuneTimeout, match="stage 2"):  # stage 1 done, stage 2 created, still running
        run(stage_files, state, client, timeout=0)
    assert len(created_jobs(server)) == 2
    job2 = list(server.jobs)[1]
    assert read_state(state)["stages"][1]["job_id"] == job2

    server.requests.clear()
    fresh = FineTuneClient(server.base_url, api_key="other-key", timeout=5)  # a new process
    result = run(stage_files, state, fresh)
    jobs = created_jobs(server)
    assert len(jobs) == 1 and len(server.recorded("POST", "/v1/files")) == 1  # stage 3 only
    assert server.recorded("GET", f"/v1/fine_tuning/jobs/{job2}")  # stage 2's job was polled
    assert jobs[0]["model"] == server.jobs[job2]["fine_tuned_model"]
    assert result.model_id == list(server.jobs.values())[2]["fine_tuned_model"]
    assert result.trained_tokens == sum(j["trained_tokens"] for j in server.jobs.values())


def test_job_created_but_not_recorded_is_adopted(server, client, stage_files, tmp_path, monkeypatch):
    state = tmp_path / "state.json"
    real_create = client.create_job

    def create_then_crash(*args, **kw):
        real_create(*args, **kw)
        raise KeyboardInterrupt  # the process dies before the job id is saved

    monkeypatch.setattr(client, "create_job", create_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run(stage_files, state, client)
    monkeypatch.undo()
    assert read_state(state)["stages"][0]["job_id"] is None and read_state(state)["stages"][0]["file_id"]
    result = run(stage_files, state, client)
    assert len(created_jobs(server)) == 3 and len(server.jobs) == 3
    assert result.stages[0]["job_id"] == list(server.jobs)[0]


def test_state_refuses_changed_inputs_and_missing_prices(server, client, stage_files, tmp_path):
    state = tmp_path / "state.json"
    with pytest.raises(FineTuneError, match="no fine-tuning training price for 'gpt-4o-2024-08-06'"):
        run_stages(stage_files, "gpt-4o-2024-08-06", state, client, prices=PRICES)
    assert server.requests == [] and not state.exists()
    with pytest.raises(FineTuneTimeout):
        run(stage_files, state, client, timeout=0)
    with pytest.raises(FineTuneError, match="base model 'gpt-3.5-turbo-0125', not 'gpt-4-0613'"):
        run_stages(stage_files, "gpt-4-0613", state, client, prices=PRICES)
    stage_files[0].write_text(stage_files[1].read_text())
    with pytest.raises(FineTuneError, match="stage 1's dataset changed"):
        run(stage_files, state, client)
    assert len(created_jobs(server)) == 1


def test_prices_lookup():
    assert PRICES.price("gpt-3.5-turbo-0125") == 8.0
    assert PRICES.price("openai:gpt-4-0613") == 90.0
    assert PRICES.price("ft:gpt-3.5-turbo-0125:org::abc") == 8.0


def test_finetune_stage_datasets_without_prices_records_tokens_only(server, client, tmp_path):
    result = finetune_stage_datasets(stage_datasets(), tmp_path / "run", BASE, client, poll_interval=0, timeout=5)
    assert (tmp_path / "run" / "openai-ft.json").is_file()
    assert result.cost_usd is None and result.trained_tokens > 0
    assert result.model_id == list(server.jobs.values())[-1]["fine_tuned_model"]


def test_http_errors_are_one_line_and_gets_are_retried(server, client, stage_files, tmp_path):
    server.inject_error("GET", "/v1/fine_tuning/jobs/", 503, "overloaded", times=2)
    server.inject_error("POST", "/v1/fine_tuning/jobs", 500, "boom\nagain")
    expected = r"^POST http://127\.0\.0\.1:\d+/v1/fine_tuning/jobs answered HTTP 500: boom again$"
    with pytest.raises(FineTuneError, match=expected):
        run(stage_files, tmp_path / "state.json", client)
    result = run(stage_files, tmp_path / "state.json", client)  # the 503s are retried
    assert result.model_id
    assert len(server.recorded("POST", "/v1/files")) == 3


def test_api_key_and_base_url_from_the_environment(server, monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(FineTuneError, match="OPENAI_API_KEY is not set"):
        FineTuneClient()
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    client = FineTuneClient()  # the stub takes no key
    assert client.base_url == server.base_url
    path = write_chat_jsonl([{"prompt": "q", "answer": "a"}], tmp_path / "one.jsonl")
    client.get_job(client.create_job(client.upload_file(path)["id"], BASE)["id"])
    assert "Authorization" not in server.requests[-1]["headers"]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    FineTuneClient().list_jobs()
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer sk-env"



# -- inference -----------------------------------------------------------------------------------------


DECODING_KEYS = ("temperature", "top_p", "max_tokens", "presence_penalty", "frequency_penalty")


def test_chat_completions_carry_the_paper_decoding(server, client, stage_files, tmp_path):
    result = run(stage_files, tmp_path / "state.json", client)
    server.answers = {result.model_id: "find . -name '*.py'"}
    gen = PaperChatGenerator(server.base_url, result.model_id, api_key="sk-test")
    prompts = [ServedPrompt(messages=Prompt(q).to_messages(), input_tokens=3) for _, q, _ in QUERIES]
    out = list(gen.generate(prompts, max_new_tokens=64, stop=["\n\n"]))
    assert [g.text for g in out] == ["find . -name '*.py'"] * 3
    assert out[0].input_tokens == 4 + len(QUERIES[0][1].split()) and out[0].output_tokens == 4

    chats = server.recorded("POST", "/v1/chat/completions")
    assert len(chats) == 3
    for body, (_, q, _) in zip((c["body"] for c in chats), QUERIES, strict=True):
        assert body["model"] == result.model_id
        assert body["messages"] == [{"role": "user", "content": q}]  # query only
        assert {k: body[k] for k in DECODING_KEYS} == {
            "temperature": 0.0, "top_p": 0.95, "max_tokens": 1028, "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
        }  # fmt: skip
        assert set(body) - set(DECODING_KEYS) <= {"model", "messages", "n", "stream", "stop"}
        assert body.get("n", 1) == 1 and body.get("stream", False) is False
    assert PAPER_DECODING == {k: chats[0]["body"][k] for k in DECODING_KEYS}

    answer = client.chat(result.model_id, [{"role": "user", "content": "hi"}])
    body = server.recorded("POST", "/v1/chat/completions")[-1]["body"]
    assert set(body) == {"model", "messages", *DECODING_KEYS}
    assert {k: body[k] for k in DECODING_KEYS} == PAPER_DECODING
    assert answer["usage"]["total_tokens"] > 0
    with pytest.raises(Exception, match="does not exist"):
        client.chat("ft:gpt-3.5-turbo-0125:nobody::x", [{"role": "user", "content": "hi"}])


# -- the harness: an `openai:<model>` experiment trains and serves through the API ----------------------------


def test_promptintern_on_an_api_model_trains_three_chained_jobs_and_serves_the_last(tmp_path, monkeypatch):
    """`reproduce`'s path for the GPT rows: the experiment writes its stage datasets as chat JSONL, runs one
    fine-tuning job per stage (each from the previous stage's model), answers the test queries through chat
    completions of the final model with the paper's decoding, and a rerun reuses the finished jobs."""
    from promptintern.harness.experiment import Experiment
    from promptintern.profile import load_profile
    from promptintern.serving.openai_stub_server import StubOpenAIServer

    monkeypatch.setenv("PROMPTINTERN_HOME", str(tmp_path / "home"))
    with StubOpenAIServer(polls_to_succeed=1, answers=lambda model, messages: "```bash\nls -l\n```") as server:
        profile = tmp_path / "api.yaml"
        profile.write_text("extends: smoke\nname: api\nmodel: openai:gpt-3.5-turbo-0125\n"
                           f"generation: {{openai: {{base_url: '{server.base_url}', finetune_poll_s: 0}}}}\n")  # fmt: skip
        exp = Experiment("nl2bash", "promptintern", load_profile(str(profile)))
        assert exp.backend == "openai" and exp.unavailable() is None
        scores = exp.evaluate(progress=False)
        jobs = [r["body"] for r in server.recorded("POST", "/v1/fine_tuning/jobs")]
        chats = [r["body"] for r in server.recorded("POST", "/v1/chat/completions")]
        state = json.loads((exp.train_config().output_dir / "openai-ft.json").read_text())
        assert Experiment("nl2bash", "gist", load_profile(str(profile))).unavailable()  # needs the weights
        Experiment("nl2bash", "promptintern", load_profile(str(profile))).train(progress=False)  # a rerun
        assert len(server.recorded("POST", "/v1/fine_tuning/jobs")) == 3  # no new job
    assert len(jobs) == 3 and jobs[0]["model"] == "gpt-3.5-turbo-0125"
    finals = [s["fine_tuned_model"] for s in state["stages"]]
    assert [j["model"] for j in jobs[1:]] == finals[:2]
    assert len(chats) == len(exp.test_set) and {c["model"] for c in chats} == {finals[2]}
    assert all({k: c[k] for k in PAPER_DECODING} == PAPER_DECODING for c in chats)
    assert chats[0]["messages"][-1]["role"] == "user" and scores["n"] == len(exp.test_set)
    assert state["trained_tokens"] > 0 and state["cost_usd"] > 0
