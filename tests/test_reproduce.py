"""`promptintern reproduce` end to end: smoke profile, tiny random model, tiny table specs."""

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from promptintern.harness.dry_run import format_job_states, job_states
from promptintern.harness.experiment import Experiment
from promptintern.harness.reproduce import reproduce
from promptintern.harness.reproduce_cli import reproduce_cmd
from promptintern.harness.store import ResultsStore
from promptintern.harness.tables import SpecError
from promptintern.profile import load_profile
from promptintern.prompting.tokens import counter_for

TINY = """id: "{id}"
title: "Table {id}: tiny"
tasks: [nl2f]
rows:
{rows}
"""


def _spec(directory, table_id, *rows):
    directory.mkdir(parents=True, exist_ok=True)
    body = "\n".join(f"  - {r}" for r in rows)
    (directory / f"table{table_id}.yaml").write_text(TINY.format(id=table_id, rows=body))
    return directory


def test_reproduce_end_to_end_then_cached(tmp_path, tiny_model_dir, monkeypatch):
    specs = _spec(
        tmp_path / "specs",
        9,
        "{label: Query only, method: zero-shot}",
        "{label: PromptIntern, method: promptintern}",
    )
    smoke, model, out = load_profile("smoke"), str(tiny_model_dir), tmp_path / "out"
    kw = dict(model=model, out=out, spec_dir=specs, sizing=False, progress=False, command="test")
    with ResultsStore(tmp_path / "r.sqlite") as store:
        summary = reproduce(smoke, "9", store=store, **kw)
        assert summary["rows"] == {"ok": 2, "not run": 0, "failed": 0}
        for name in ("table9.md", "table9.csv", "table9.json", "pareto-nl2f.png", "schedules.png"):
            assert (out / name).stat().st_size > 0, name
        assert (out / "pareto-nl2f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        rows = {r.method: r for r in store.rows("9", "smoke", model=model)}
        assert set(rows) == {"zero-shot", "promptintern"}
        pi, zs = rows["promptintern"], rows["zero-shot"]
        assert pi.status == "ok" and pi.n == 3 and pi.metric == "em" and pi.ci_lo <= pi.value <= pi.ci_hi
        assert pi.provenance["settings_key"] == pi.settings_key and pi.provenance["timings_s"]["train"] > 0
        # τ_all / ×: the row's tokens against the template-only prompt's on the same test instances (the
        # paper's definition); τ_full against the full prompt's (template + k shots)
        counter = counter_for(model)

        def mean_tokens(method):
            prompts = Experiment("nl2f", method, smoke, model).inference_prompts()
            return sum(counter.count_prompt(p) for p in prompts) / len(prompts)

        full, template = mean_tokens("zero-shot-full"), mean_tokens("ft-template")
        assert zs.full_tokens_mean == pytest.approx(full) and zs.template_tokens_mean == pytest.approx(template)
        assert zs.tau_all == pytest.approx(zs.input_tokens_mean / template) and 0 < zs.tau_all < 1
        assert zs.compression_x == pytest.approx(template / zs.input_tokens_mean) and zs.compression_x > 1
        assert zs.tau_full == pytest.approx(zs.input_tokens_mean / full) and zs.tau_full < zs.tau_all
        assert pi.rate_requested == 0.0 and pi.shots == 0 and pi.cost_usd_per_instance == 0.0
        # billed as the paper's API rows: cl100k counts of the actual requests at fine-tuned GPT prices
        assert pi.input_tokens_cl100k_mean > 0 and pi.output_tokens_cl100k_mean is not None
        expected = (pi.input_tokens_cl100k_mean * 0.003 + pi.output_tokens_cl100k_mean * 0.006) / 1000
        assert pi.cost_ft_gpt35_usd_per_instance == pytest.approx(expected)
        assert pi.cost_ft_gpt4_usd_per_instance > pi.cost_ft_gpt35_usd_per_instance
        md = (out / "table9.md").read_text()
        assert (
            f"| PromptIntern | {pi.value:.1f} [{pi.ci_lo:.1f}, {pi.ci_hi:.1f}] | {pi.input_tokens_mean:.1f} |"
            in md
        )
        assert "Command: `test`" in md

        # second call: served from the experiment cache, no training, same numbers
        train_dir = Experiment("nl2f", "promptintern", smoke, model).train_directory
        adapter = train_dir / "adapter" / "adapter_model.safetensors"
        mtime = adapter.stat().st_mtime_ns

        def no_training(*a, **k):
            raise AssertionError("training ran again")

        monkeypatch.setattr("promptintern.training.trainer.train_progressive", no_training)
        again = reproduce(smoke, "9", store=store, **kw)
        assert again["rows"] == summary["rows"] and adapter.stat().st_mtime_ns == mtime
        assert all(e["wall_s"] < 5 for e in again["experiments"]), again["experiments"]
        assert {r.method: r.value for r in store.rows("9", "smoke")} == {
            "zero-shot": zs.value,
            "promptintern": pi.value,
        }
        assert len(store.rows()) == 2  # upserted, not duplicated
        # the cached rerun keeps the compute time of the run that produced the numbers, and both
        # invocations are in the history
        first = {e["experiment"]: e for e in summary["experiments"]}
        for e in again["experiments"]:
            assert e["compute_s"] == first[e["experiment"]]["compute_s"] > 0
        rerun = {r.method: r for r in store.rows("9", "smoke")}["promptintern"]
        assert rerun.provenance["computed_at"] == pi.provenance["computed_at"] and "recorded_git" in rerun.provenance
        assert {r.method: r.wall_s for r in store.rows("9", "smoke")}["promptintern"] == pytest.approx(
            sum(pi.provenance["timings_s"].values()), abs=1e-3
        )
        history = [json.loads(x) for x in (out / "reproduce-history.jsonl").read_text().splitlines()]
        assert [h["wall_s"] for h in history] == [summary["wall_s"], again["wall_s"]]


def test_failing_rows_are_recorded_and_others_render(tmp_path, tiny_model_dir, monkeypatch):
    specs = _spec(
        tmp_path / "specs",
        9,
        "{label: Query only, method: zero-shot}",
        "{label: No template, method: ft-none}",
        "{label: LLMLingua-2, method: llmlingua2}",
        "{label: Broken variant, method: zero-shot, variant: broken, overrides: {method: {bogus: 1}}}",
    )
    monkeypatch.delenv("PROMPTINTERN_LLMLINGUA2_MODEL", raising=False)
    original = Experiment.evaluate

    def evaluate(self, *a, **k):
        if self.method == "ft-none":
            raise RuntimeError("boom")
        return original(self, *a, **k)

    monkeypatch.setattr(Experiment, "evaluate", evaluate)
    out = tmp_path / "out"
    with ResultsStore(tmp_path / "r.sqlite") as store:
        summary = reproduce(
            load_profile("smoke"),
            "9",
            model=str(tiny_model_dir),
            out=out,
            spec_dir=specs,
            sizing=False,
            progress=False,
            store=store,
        )
        rows = {r.variant or r.method: r for r in store.rows("9")}
    assert summary["rows"] == {"ok": 1, "not run": 1, "failed": 2}
    assert rows["zero-shot"].status == "ok"
    assert rows["ft-none"].status == "failed" and rows["ft-none"].reason == "RuntimeError: boom"
    assert rows["llmlingua2"].status == "not run" and "LLMLingua-2" in rows["llmlingua2"].reason
    assert rows["broken"].status == "failed" and "method.bogus" in rows["broken"].reason
    md = (out / "table9.md").read_text()
    assert "| No template | —¹ | — | — |" in md and "¹ failed: RuntimeError: boom" in md
    assert "| LLMLingua-2 | —² |" in md and "² not run: " in md and f"| Query only | {rows['zero-shot'].value:.1f} [" in md
    csv_lines = (out / "table9.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[2].endswith(",failed" + "," * 25 + "RuntimeError: boom")


def test_sizing_records_skipped_cells_as_not_run(tmp_path, tiny_model_dir):
    specs = _spec(
        tmp_path / "specs", 9, "{label: Query only, method: zero-shot}", "{label: FT, method: ft-full}"
    )
    text = (specs / "table9.yaml").read_text().replace("tasks: [nl2f]", "tasks: [nl2bash, nl2f]")
    (specs / "table9.yaml").write_text(text)
    sizing = tmp_path / "sizing.yaml"
    sizing.write_text(
        "profiles:\n  smoke:\n    tasks: [nl2f]\n    overrides: {tasks: {nl2f: {test_limit: 2}}}\n"
        "    skip: [ft-full]\n    reason: too slow here\n"
    )
    with ResultsStore(tmp_path / "r.sqlite") as store:
        summary = reproduce(
            "smoke",
            "9",
            model=str(tiny_model_dir),
            out=tmp_path / "out",
            spec_dir=specs,
            sizing=sizing,
            progress=False,
            store=store,
        )
        rows = {(r.method, r.task): r for r in store.rows("9")}
    assert summary["rows"] == {"ok": 1, "not run": 3, "failed": 0}
    assert rows[("zero-shot", "nl2f")].n == 2  # the sizing override reached the experiment
    assert rows[("ft-full", "nl2f")].reason == "too slow here"
    assert rows[("zero-shot", "nl2bash")].reason.startswith(
        "task nl2bash is not in the smoke profile's reproduce"
    )


def test_sizing_row_overrides_give_one_row_more_test_instances(tmp_path, tiny_model_dir):
    """row_overrides reach only that row's experiments; its × uses the template-only prompt on its own test
    instances, the table marks its different n, and the provenance records the overrides."""
    from promptintern.harness.sizing import apply_overrides

    specs = _spec(tmp_path / "specs", 9, "{label: Query only, method: zero-shot}",
                  "{label: Full, method: zero-shot-full}")  # fmt: skip
    sizing = tmp_path / "sizing.yaml"
    sizing.write_text(
        "profiles:\n  smoke:\n    overrides: {tasks: {nl2f: {test_limit: 2}}}\n"
        "    row_overrides:\n      zero-shot: {tasks: {nl2f: {test_limit: 3}}}\n"
    )
    model, out = str(tiny_model_dir), tmp_path / "out"
    with ResultsStore(tmp_path / "r.sqlite") as store:
        reproduce("smoke", "9", model=model, out=out, spec_dir=specs, sizing=sizing, progress=False, store=store)
        rows = {r.method: r for r in store.rows("9")}
    assert rows["zero-shot"].n == 3 and rows["zero-shot-full"].n == 2
    assert rows["zero-shot"].provenance["overrides"] == {"tasks": {"nl2f": {"test_limit": 3}}}
    counter = counter_for(model)
    three = apply_overrides(load_profile("smoke"), {"tasks": {"nl2f": {"test_limit": 3}}})
    prompts = Experiment("nl2f", "ft-template", three, model).inference_prompts()
    assert len(prompts) == 3
    template = sum(counter.count_prompt(p) for p in prompts) / 3
    assert rows["zero-shot"].template_tokens_mean == pytest.approx(template)
    md = (out / "table9.md").read_text()
    assert "n = 2, 3 (differs by row)" in md and "over 3 test instances, most of the table's results over 2 (the reproduce sizing's row_overrides give this row more" in md


def test_an_interrupted_run_keeps_the_experiments_that_finished(tmp_path, tiny_model_dir, monkeypatch):
    """Each experiment is exported to the results folder as it finishes, so a run stopped in the middle (a
    sitting of cpu-full that ran out of time) loses nothing that finished."""
    from promptintern.harness import reproduce as harness

    specs = _spec(tmp_path / "specs", 9, "{label: Query only, method: zero-shot}",
                  "{label: Full, method: zero-shot-full}")  # fmt: skip
    real, calls = harness._run_job, []

    def stop_at_the_second(job, progress):
        calls.append(job.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(job, progress)

    monkeypatch.setattr(harness, "_run_job", stop_at_the_second)
    out = tmp_path / "out"
    with ResultsStore(tmp_path / "r.sqlite") as store, pytest.raises(KeyboardInterrupt):
        reproduce("smoke", "9", model=str(tiny_model_dir), out=out, spec_dir=specs, sizing=False, progress=False,
                  store=store)  # fmt: skip
    exported = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert [e["method"] for e in exported] == [calls[0].split("/")[1]] and exported[0]["status"] == "ok"
    assert (out / exported[0]["directory"] / "scores.jsonl").is_file()
    # a row that cannot run here (no GGUF for llama.cpp) is exported with its reason as it is recorded, so a
    # stopped sitting's folder says why that cell is empty instead of "not run yet"
    calls.clear()
    with ResultsStore(tmp_path / "r2.sqlite") as store, pytest.raises(KeyboardInterrupt):
        reproduce("smoke", "9", model=str(tiny_model_dir), out=tmp_path / "out2", spec_dir=specs, sizing=False,
                  progress=False, store=store, backend="llamacpp")  # fmt: skip
    exported = [json.loads(line) for line in (tmp_path / "out2" / "rows.jsonl").read_text().splitlines()]
    assert [(e["status"], e["directory"]) for e in exported] == [("not run", None)]
    assert "GGUF" in exported[0]["reason"]


def test_tasks_and_backend_options_reach_every_experiment(tmp_path, tiny_model_dir):
    """--task replaces the tables' tasks (a folder task here); --backend llamacpp reaches every experiment, and a
    model without a GGUF makes its rows 'not run' with the reason (gist, decoded by its own HF loop, would still run)."""
    from promptintern.testing import write_task_folder

    folder = write_task_folder(tmp_path / "tasks")
    specs = _spec(tmp_path / "specs", 9, "{label: Query only, method: zero-shot}", "{label: Cached, method: prefix-cached}")
    with ResultsStore(tmp_path / "r.sqlite") as store:
        summary = reproduce("smoke", "9", model=str(tiny_model_dir), out=tmp_path / "out", spec_dir=specs,
                            sizing=False, progress=False, store=store, tasks=[str(folder)], backend="llamacpp")  # fmt: skip
        rows = {r.method: r for r in store.rows("9")}
    assert {r.task for r in rows.values()} == {"reverse"} and summary["rows"]["failed"] == 0
    assert rows["zero-shot"].status == "not run" and "GGUF" in rows["zero-shot"].reason
    assert rows["prefix-cached"].status == "not run" and "GGUF" in rows["prefix-cached"].reason  # served by llama.cpp too


def test_cli_writes_tables_and_prints_summary(tmp_path, tiny_model_dir):
    specs = _spec(tmp_path / "specs", 9, "{label: Query only, method: zero-shot}")
    app = typer.Typer()
    app.command()(reproduce_cmd)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "--profile",
            "smoke",
            "--tables",
            str(specs / "table9.yaml"),
            "--model",
            str(tiny_model_dir),
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["rows"] == {"ok": 1, "not run": 0, "failed": 0}
    assert "Command: `promptintern reproduce --profile smoke --tables" in (out / "table9.md").read_text()
    with ResultsStore() as store:  # the default store under the (test) PROMPTINTERN_HOME
        assert [r.method for r in store.rows("9", "smoke")] == ["zero-shot"]
    runner = CliRunner()
    listed = runner.invoke(app, ["--profile", "smoke", "--tables", str(specs / "table9.yaml"), "--model",
                                 str(tiny_model_dir), "--dry-run"])  # fmt: skip
    assert listed.exit_code == 0, listed.output
    assert "\n  done     nl2f/zero-shot  " in listed.stdout and listed.stdout.endswith("1 done; 0 cells not run by the sizing\n")
    refused = runner.invoke(app, ["--dry-run", "--from-results", str(out)])
    assert refused.exit_code != 0 and "--dry-run lists one model's experiments" in refused.output


def test_seeded_rows_claims_export_and_rebuild_from_results(tmp_path, tiny_model_dir, monkeypatch):
    """Seeded rows train once per seed; the run exports its records, a later sitting with an empty home keeps
    them instead of training again, and --from-results rebuilds tables and claims from the folder alone."""
    from promptintern.harness.reproduce import rebuild

    specs = _spec(tmp_path / "specs", 9, "{label: Query only, method: zero-shot}", "{label: FT none, method: ft-none}")
    sizing = tmp_path / "sizing.yaml"
    sizing.write_text(f"profiles:\n  smoke:\n    seeds: [0, 1]\n    seeded: [ft-none]\n    reuse: [{tmp_path / 'out'}]\n")
    out, model = tmp_path / "out", str(tiny_model_dir)
    kw = dict(model=model, out=out, spec_dir=specs, sizing=sizing, progress=False)

    def states():  # --dry-run: what a run would do now, doing none of it
        found = job_states("smoke", "9", model=model, spec_dir=specs, sizing=sizing)
        return sorted((j["experiment"], j["state"]) for j in found["jobs"])

    names = ["nl2f/ft-none seed 0", "nl2f/ft-none seed 1", "nl2f/zero-shot"]
    assert states() == [(n, "to run") for n in names]
    with ResultsStore(tmp_path / "r.sqlite") as store:
        summary = reproduce("smoke", "9", store=store, **kw)
        rows = store.rows("9")
    assert states() == [(n, "done") for n in names]
    ft0 = Path(next(r.directory for r in rows if r.method == "ft-none" and r.seed == 0)) / "scores.json"
    ft0.rename(ft0.with_suffix(".moved"))  # its adapter stays: a run would only generate (no sizing: no reuse)
    unsized = job_states("smoke", "9", model=model, spec_dir=specs, sizing=False)["jobs"]
    assert {j["experiment"]: j["state"] for j in unsized} == {"nl2f/zero-shot": "done", "nl2f/ft-none": "trained"}
    ft0.with_suffix(".moved").rename(ft0)
    assert summary["rows"] == {"ok": 3, "not run": 0, "failed": 0}
    seeds = sorted((r.method, r.seed) for r in rows)
    assert seeds == [("ft-none", 0), ("ft-none", 1), ("zero-shot", 0)]
    ft = [r for r in rows if r.method == "ft-none"]
    assert ft[0].directory != ft[1].directory and ft[0].settings_key != ft[1].settings_key
    claims = json.loads((out / "claims.json").read_text())
    assert {c["id"] for c in claims} >= {"a", "b", "c", "h1"} and all(c["verdict"] == "not run" for c in claims)
    md = (out / "claims.md").read_text()
    assert "— [1] (promptintern)" in md and "1. not run yet: no result for nl2f in the results store" in md
    exported = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert len(exported) == 3 and all(not e["directory"].startswith("/") for e in exported)
    for e in exported:
        assert (out / e["directory"] / "predictions.jsonl").is_file()
        assert not (out / e["directory"] / "adapter").exists()

    # another sitting: an empty home, the exported results beside it -> kept, nothing trains
    monkeypatch.setenv("PROMPTINTERN_HOME", str(tmp_path / "home2"))

    def no_training(*a, **k):
        raise AssertionError("training ran again")

    monkeypatch.setattr("promptintern.training.trainer.train_progressive", no_training)
    assert states() == [(n, "kept") for n in names]
    listing = format_job_states(job_states("smoke", "9", model=model, spec_dir=specs, sizing=sizing))
    assert listing.endswith("3 kept; 0 cells not run by the sizing\n") and "  kept     nl2f/ft-none seed 1  " in listing
    with ResultsStore(tmp_path / "r2.sqlite") as store:
        again = reproduce("smoke", "9", store=store, **kw)
        kept = {(r.method, r.seed): r.value for r in store.rows("9")}
    assert again["rows"] == summary["rows"] and all(e.get("archived") for e in again["experiments"])
    assert kept == {(r.method, r.seed): r.value for r in rows}

    # a profile with the same settings under another name reuses that folder (sizing `reuse`): kept under its own
    # profile name and copied into its own folder
    copy = tmp_path / "copy.yaml"
    copy.write_text("extends: smoke\nname: smoke-copy\n")
    sizing.write_text(sizing.read_text() + f"  smoke-copy:\n    seeds: [0, 1]\n    seeded: [ft-none]\n    reuse: [{out}]\n")
    out_copy = tmp_path / "out-copy"
    with ResultsStore(tmp_path / "r4.sqlite") as store:
        reused = reproduce(str(copy), "9", store=store, **{**kw, "out": out_copy})
        assert {(r.method, r.seed): r.value for r in store.rows("9", "smoke-copy")} == kept
    assert reused["rows"] == summary["rows"] and all(e.get("archived") for e in reused["experiments"])
    copied = [json.loads(line) for line in (out_copy / "rows.jsonl").read_text().splitlines()]
    assert {e["profile"] for e in copied} == {"smoke-copy"}
    assert all((out_copy / e["directory"] / "predictions.jsonl").is_file() for e in copied)

    # --from-results: store, tables and claims from the folder alone
    with ResultsStore(tmp_path / "r3.sqlite") as store:
        rebuilt = rebuild(out, specs=load_specs_from(specs), out=tmp_path / "rebuilt", store=store)
        assert {(r.method, r.seed): r.value for r in store.rows("9")} == kept
    assert rebuilt["rows"] == summary["rows"]
    assert (tmp_path / "rebuilt" / "table9.md").is_file() and (tmp_path / "rebuilt" / "claims.json").is_file()

    # a piece run elsewhere, added to a results folder: its rows replace those with the same key, except that a
    # finished row is not replaced by one that did not finish; rows it lacks are kept; --tasks filters the piece
    import shutil

    task = rows[0].task
    target, piece = tmp_path / "target", tmp_path / "piece"
    shutil.copytree(out, target)
    shutil.copytree(out, piece)
    lines = [json.loads(line) for line in (piece / "rows.jsonl").read_text().splitlines()]
    lines = [e | ({"value": 99.0} if e["seed"] == 1 else {"status": "failed", "reason": "OOM"} if e["method"] == "zero-shot" else {})
             for e in lines if not (e["method"] == "ft-none" and e["seed"] == 0)]  # fmt: skip
    (piece / "rows.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    with ResultsStore(tmp_path / "r5.sqlite") as store:
        other = "mbpp" if task != "mbpp" else "nl2f"
        with pytest.raises(SpecError, match=f"holds no rows of {other}"):
            rebuild(piece, specs=load_specs_from(specs), out=target, store=store, tasks=[other])
        merged = rebuild(piece, specs=load_specs_from(specs), out=target, store=store, tasks=[task])
        got = {(r.method, r.seed): (r.status, r.value) for r in store.rows("9")}
    assert got == {("ft-none", 0): ("ok", kept[("ft-none", 0)]), ("ft-none", 1): ("ok", 99.0),
                   ("zero-shot", 0): ("ok", kept[("zero-shot", 0)])}  # fmt: skip
    assert merged["rows"] == summary["rows"] and len((target / "rows.jsonl").read_text().splitlines()) == 3


def load_specs_from(directory):
    from promptintern.harness.tables import load_specs

    return load_specs("9", directory)


def test_models_run_one_reproduce_per_model_and_a_table_with_a_row_per_model(tmp_path, tiny_model_dir, monkeypatch):
    """`reproduce --models`: each model of the profile runs the tables with its own training overrides into
    results/<profile>/<model>/, and table<id>-models.md has one row per model (the paper's Tables 2-4 layout)."""
    import shutil

    from promptintern.cli import app

    twin = tmp_path / "twin"  # a second model: the same tiny weights under another path
    shutil.copytree(tiny_model_dir, twin)
    specs = _spec(tmp_path / "specs", 9, "{label: FT none, method: ft-none}")
    profile = tmp_path / "two.yaml"
    profile.write_text(f"extends: smoke\nname: two\nmodel: {tiny_model_dir}\nmodels:\n"
                       f"  - {{id: '{tiny_model_dir}', name: Tiny A}}\n"
                       f"  - {{id: '{twin}', name: Tiny B, train: {{lora_r: 2}}}}\n")  # fmt: skip
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["reproduce", "--profile", str(profile), "--tables", str(specs / "table9.yaml"),
                                      "--out", str(out), "--quiet", "--full"])  # fmt: skip
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)
    assert [r["model"] for r in runs] == [str(tiny_model_dir), str(twin)]
    assert all(r["rows"] == {"ok": 1, "not run": 0, "failed": 0} for r in runs)
    assert (out / "Tiny-A" / "table9.md").is_file() and (out / "Tiny-B" / "table9.md").is_file()
    table = (out / "table9-models.md").read_text().splitlines()
    body = [line for line in table if line.startswith("| [Tiny")]
    assert [line.split("]")[0] for line in body] == ["| [Tiny A", "| [Tiny B"] and all("—" not in b for b in body)
    with ResultsStore() as store:  # the model's own training override reached its experiment
        rows = {r.model: r for r in store.rows("9", "two")}
    keys = {m: json.loads((Path(rows[m].directory) / "settings.json").read_text())["train"]["lora_r"] for m in rows}
    assert keys == {str(tiny_model_dir): 4, str(twin): 2}
