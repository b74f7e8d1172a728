"""Table specs and rendering from hand-inserted store rows (exact Markdown / CSV), latency layout, sizing."""

import json

import pytest

from promptintern.harness.experiment import METHODS
from promptintern.harness.reproduce import tau_all
from promptintern.harness.sizing import Sizing, apply_overrides, load_sizing
from promptintern.harness.store import ResultsStore, RunRow
from promptintern.harness.tables import (
    RowSpec,
    SpecError,
    TableSpec,
    load_spec,
    load_specs,
    parse_tables,
    render_csv,
    render_json,
    render_markdown,
    write_table,
)
from promptintern.harness.tables import records as records_of
from promptintern.profile import load_profile

PROV = {
    "git": {"commit": "a" * 40, "dirty": True},
    "packages": {"torch": "2.13.0", "peft": None},
    "python": "3.11.7",
    "hardware": {"cpu": "CPU X", "cores": 2, "cores_usable": 2, "ram_gib": 23.5, "gpu": []},
}


def _row(method, **kw):
    base = dict(table_id="9", method=method, task="nl2bash", model="embedded", profile="cpu", provenance=PROV)
    return RunRow(**(base | kw))


def test_paper_specs_load():
    specs = load_specs()
    assert [s.id for s in specs] == [str(i) for i in range(1, 9)]
    for spec in specs:
        assert spec.title.startswith(f"Table {spec.id}:") and spec.rows
        assert all(r.method in METHODS for r in spec.rows)
    by_id = {s.id: s for s in specs}
    assert {r.method for r in by_id["1"].rows} >= {"selective-context", "llmlingua2", "promptintern"}
    assert [s.tasks for s in specs[1:4]] == [("mbpp",), ("nl2f",), ("nl2bash",)]
    variants = {r.variant: r.overrides for r in by_id["5"].rows + by_id["6"].rows if r.variant}
    # the paper's "w/ τ = 0.3" (Table 1's PromptIntern row too): linear 1 -> 0.3, kept at inference
    assert variants["tau-0.3"] == {
        "method": {"template_schedule": {"pattern": "linear", "start": 1.0, "end": 0.3}}
    }
    assert {r.variant: r.overrides for r in by_id["1"].rows}["tau-0.3"] == variants["tau-0.3"]
    assert variants["no-template-compression"] == {
        "method": {"template_schedule": {"pattern": "constant", "start": 1.0, "end": 1.0}}
    }
    assert by_id["1"].rates and by_id["8"].saving == "promptintern"
    assert variants["retrieval-25"] == {"method": {"retrieval_fraction": 0.25}}
    assert by_id["8"].layout == "latency" and by_id["8"].reference == ("ft-full", "zero-shot-full")
    assert parse_tables("1, 3") == ["1", "3"]


def test_spec_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "table9.yaml"
    bad.write_text("id: 9\ntitle: T\ntasks: [nl2bash, sql]\nrows: [{label: A, method: magic}]\n")
    with pytest.raises(SpecError) as err:
        load_spec(9, tmp_path)
    msg = str(err.value)
    assert "table9.yaml" in msg and "unknown task(s) sql" in msg and "unknown method 'magic'" in msg
    with pytest.raises(ValueError, match="need a variant name"):
        TableSpec(
            id="9",
            title="T",
            tasks=("nl2bash",),
            rows=(RowSpec(label="A", method="promptintern", overrides={"x": 1}),),
        )
    with pytest.raises(ValueError, match="are both 'zero-shot'"):
        TableSpec(id="9", title="T", tasks=("nl2bash",), rows=(RowSpec(label="A", method="zero-shot"),) * 2)
    with pytest.raises(SpecError, match="no table spec"):
        load_spec(42, tmp_path)


SMALL = """id: "9"
title: "Table 9: tiny"
caption: A caption.
tasks: [nl2bash]
rows:
  - {label: PromptIntern, method: promptintern}
  - {label: LLMLingua-2, method: llmlingua2}
  - {label: Gist, method: gist}
"""

EXPECTED_MD = """# Table 9: tiny

A caption.

Profile `cpu`, model `embedded`.

| Method | NL2Bash BLEU | NL2Bash tokens | NL2Bash × |
| --- | ---: | ---: | ---: |
| PromptIntern | 12.3 [10.0, 14.6] | 56.3 | 8.6× |
| LLMLingua-2 | —¹ | — | — |
| Gist | —² | — | — |

¹ not run: no checkpoint | set X

² not run yet: no result in the results store; `promptintern reproduce --profile cpu --tables 9` runs it (`--tasks` for some tasks only; finished experiments are kept)

Test instances per task: NL2Bash n = 20.

Training seeds: 0 for every result.

Provenance: commit aaaaaaaaaaaa (dirty); python 3.11.7, torch 2.13.0; hardware: CPU X (2 cores, 23.5 GiB RAM, no GPU); rendered 2026-01-01T00:00:00Z.
Command: `promptintern reproduce --tables 9`
"""

EXPECTED_CSV = (
    "table,label,method,variant,task,seeds,status,metric,value,ci_lo,ci_hi,n,input_tokens_mean,template_tokens_mean,"
    "compression_x,tau_all,tau_full,rate_requested,rate_achieved,latency_s_mean,ttft_s_mean,tpot_s_mean,"
    "latency_output_tokens_mean,latency_n,latency_source,speedup,cost_usd_per_instance,"
    "input_tokens_cl100k_mean,output_tokens_cl100k_mean,cost_ft_gpt35_usd_per_instance,"
    "cost_ft_gpt4_usd_per_instance,reason\n"
    "9,PromptIntern,promptintern,,nl2bash,0,ok,bleu,12.345,10,14.56,20,56.3,484.18,8.6,0.11628,0.01675,,,0.5,,,,,,,0,"
    ",,,,\n"
    "9,LLMLingua-2,llmlingua2,,nl2bash,0,not run,,,,,,,,,,,,,,,,,,,,,,,,,no checkpoint | set X\n"
    "9,Gist,gist,,nl2bash,,missing,,,,,,,,,,,,,,,,,,,,,,,,,not run yet: no result in the results store; "
    "`promptintern reproduce --profile cpu --tables 9` runs it (`--tasks` for some tasks only; finished "
    "experiments are kept)\n"
)


def test_render_exact_markdown_and_csv(tmp_path):
    (tmp_path / "table9.yaml").write_text(SMALL)
    spec = load_spec(9, tmp_path)
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.record(
            _row(
                "promptintern",
                metric="bleu",
                value=12.345,
                ci_lo=10.0,
                ci_hi=14.56,
                n=20,
                input_tokens_mean=56.3,
                template_tokens_mean=484.18,
                compression_x=8.6,
                tau_all=0.11628,
                tau_full=0.01675,
                latency_s_mean=0.5,
                cost_usd_per_instance=0.0,
            )
        )
        store.record(_row("llmlingua2", status="not run", reason="no checkpoint |\n set X"))
        store.record(_row("promptintern", profile="paper", value=99.0))  # another profile: not shown
        # a task the spec does not show (a `--tasks` piece records every table it touches): neither a cell nor a
        # commit in the Provenance line
        other = {**PROV, "git": {"commit": "b" * 40, "dirty": False}}
        store.record(_row("promptintern", task="nl2f", value=5.0, provenance=other))
        rows = store.rows("9", "cpu", model="embedded")
    paths = write_table(
        spec,
        rows,
        tmp_path / "out",
        profile="cpu",
        model="embedded",
        command="promptintern reproduce --tables 9",
        rendered_at="2026-01-01T00:00:00Z",
    )
    assert [p.name for p in paths] == ["table9.md", "table9.csv", "table9.json"]
    assert paths[0].read_text() == EXPECTED_MD
    assert paths[1].read_text() == EXPECTED_CSV
    data = json.loads(paths[2].read_text())
    assert data["columns"] == ["Method", "NL2Bash BLEU", "NL2Bash tokens", "NL2Bash ×"]
    assert [r["status"] for r in data["records"]] == ["ok", "not run", "missing"]
    assert [r["seeds"] for r in data["records"]] == [[0], [0], []]
    assert data["records"][1]["reason"] == "no checkpoint |\n set X"  # full text kept in JSON
    assert data["provenance"]["commits"] == ["a" * 40]


def test_latency_layout_speedup(tmp_path):
    spec = load_spec(8)
    server = dict(table_id="8", latency_source="server", latency_n=10, n=20)
    rows = [
        _row("zero-shot-full", latency_s_mean=4.0, ttft_s_mean=3.0, tpot_s_mean=0.02, latency_output_tokens_mean=51.0,
             value=1.0, cost_ft_gpt35_usd_per_instance=0.002, **server),
        _row("promptintern", latency_s_mean=0.5, ttft_s_mean=0.1, tpot_s_mean=0.0125, latency_output_tokens_mean=33.0,
             value=2.0, cost_ft_gpt35_usd_per_instance=0.0001, **server),
        _row("ft-full", table_id="8", status="not run", reason="outside the budget"),
        _row("gist", table_id="8", value=1.5, n=20, latency_source="not measured: gist decodes with its own loop (HF)"),
    ]  # fmt: skip
    md = write_table(spec, rows, tmp_path, profile="cpu", model="embedded")[0].read_text()
    assert (
        "| NL2Bash latency (s) | NL2Bash TTFT (s) | NL2Bash TPOT (ms) | NL2Bash out tok | NL2Bash speedup "
        "| NL2Bash $/1K inst (ft gpt-3.5) |" in md
    )
    # ft-full has no result, so zero-shot-full is the reference: 4.0 / 0.5 = 8x; MBPP and NL2F have no rows
    missing = "| —¹ " + "| — " * 5
    assert "| PromptIntern " + missing * 2 + "| 0.500 | 0.100 | 12.5 | 33.0 | 8.00× | 0.100 |" in md
    assert "| Gist tokens " + missing * 2 + "| —³ | — | — | — | — | — |" in md
    assert "NL2Bash: promptintern costs 95.0 % less than zero-shot-full at fine-tuned gpt-3.5-turbo" in md
    records = json.loads((tmp_path / "table8.json").read_text())["records"]
    saving = [r.get("cost_saving_vs_reference") for r in records if r["task"] == "nl2bash"]
    assert saving.count(None) == len(saving) - 1 and pytest.approx(0.95) in saving
    assert "| FT: template + k shots " + missing * 2 + "| —² " + "| — " * 5 + "|" in md
    notes = [line for line in md.splitlines() if line and line[0] in "¹²³⁴"]
    assert notes == [
        "¹ not run yet: no result in the results store; `promptintern reproduce --profile cpu --tables 8` runs it "
        "(`--tasks` for some tasks only; finished experiments are kept)",
        "² not run: outside the budget",
        "³ latency not measured: gist decodes with its own loop (HF)",
    ]
    assert "Speedup reference: NL2Bash: zero-shot-full." in md
    assert "Test instances per task: MBPP n = — (no result); NL2F n = — (no result); " in md
    assert "NL2Bash n = 20 (latency: 10 requests per row)." in md
    # a row with only its in-process generation time (e.g. kept from an archive, no adapter to serve) is not
    # comparable with the server's requests: no latency and no speedup
    kept = _row("ft-none", table_id="8", value=1.2, n=20, latency_s_mean=0.3, latency_source=None)
    md2 = write_table(spec, [*rows, kept], tmp_path / "kept", profile="cpu", model="embedded")[0].read_text()
    assert "| FT: no template " + missing * 2 + "| —³ " + "| — " * 5 + "|" in md2  # before Gist's row
    assert "³ latency not measured through the server" in md2
    csv_text = (tmp_path / "table8.csv").read_text()
    assert "promptintern,,nl2bash,0,ok,,2,,,20,,,,,,,,0.5,0.1,0.0125,33,10,server,8,,,,0.0001,," in csv_text


def test_tau_all_and_overrides():
    assert tau_all(50.0, 200.0) == 0.25 and tau_all(None, 200.0) is None and tau_all(5.0, 0.0) is None
    cpu = load_profile("cpu")
    v = apply_overrides(
        cpu, {"method": {"template_schedule": {"pattern": "constant", "start": 0.3, "end": 0.3}}}
    )
    assert v.name == "cpu" and v.method.template_schedule.pattern == "constant"
    assert v.method.template_schedule.rate == cpu.method.template_schedule.rate  # deep merge keeps siblings
    assert v.method.instruction_compressor == cpu.method.instruction_compressor and v.train == cpu.train
    assert apply_overrides(cpu, {}) is cpu
    with pytest.raises(ValueError, match=r"method\.bogus"):
        apply_overrides(cpu, {"method": {"bogus": 1}})
    with pytest.raises(ValueError, match="may not change 'name'"):
        apply_overrides(cpu, {"name": "other"})


def test_cpu_sizing_is_documented_and_applies():
    sizing = load_sizing("cpu")
    assert sizing.tasks == ("nl2bash",) and "60-minute budget" in sizing.reason
    assert not sizing.overrides  # the subset sizes live in the cpu profile itself
    # a fresh clone's `make reproduce` recomputes everything; cpu-full resumes its pieces and keeps cpu's runs
    assert sizing.reuse == () and load_sizing("cpu-full").reuse == ("results/cpu-full", "results/cpu")
    cpu = load_profile("cpu").task("nl2bash")
    assert (cpu.train_limit, cpu.test_limit) == (32, 100)
    assert sizing.skips(RowSpec(label="x", method="ft-template"))
    tau = RowSpec(label="x", method="promptintern", variant="tau-0.3", overrides={"a": 1})
    assert not sizing.skips(tau)  # Table 1's PromptIntern row runs
    # the rows of the primary claims (a)-(c) train with two seeds, the others with the profile's
    assert sizing.seeds_for(tau, 0) == (0, 1) and sizing.seeds_for(RowSpec(label="x", method="ft-none"), 0) == (0, 1)
    assert sizing.seeds_for(RowSpec(label="x", method="ft-full"), 0) == (0,)
    assert not sizing.skips(RowSpec(label="x", method="distill"))  # context distillation runs on the cpu profile
    assert Sizing("x", skip=("promptintern/*",)).skips(tau)
    assert sizing.skips(RowSpec(label="x", method="promptintern", variant="retrieval-25", overrides={"a": 1}))
    assert not sizing.skips(RowSpec(label="x", method="promptintern"))
    assert sizing.skips_task("mbpp") and not sizing.skips_task("nl2bash")
    assert load_sizing("paper") is None and not Sizing("x").skips_task("mbpp")


def test_pareto_front():
    from promptintern.harness.plots import pareto_front

    points = [(56, 12), (56, 2), (900, 8), (1829, 13), (3358, 5), (1829, 13)]
    assert pareto_front(points) == [(56, 12), (1829, 13)]


def _spec2(*rows, tasks=("nl2bash",)):
    return TableSpec(
        id="9", title="Table 9: t", tasks=tasks, rows=tuple(RowSpec(label=lab, method=m) for lab, m in rows)
    )


def test_footnotes_number_distinct_reasons_once():
    spec = _spec2(("A", "zero-shot"), ("B", "ft-full"), ("C", "ft-none"), ("D", "gist"), tasks=("nl2bash", "nl2f"))
    long = "outside the budget " * 12  # 228 characters: once, in full, under the table
    rows = [
        _row("zero-shot", status="not run", reason=long),
        _row("zero-shot", task="nl2f", status="not run", reason="no nl2f"),
        _row("ft-full", status="not run", reason=long + "\n"),  # same text once whitespace is collapsed
        _row("ft-full", task="nl2f", status="failed", reason="RuntimeError: boom"),
        _row("ft-none", status="failed", reason="no nl2f"),  # failed, not not-run: its own note
        _row("ft-none", task="nl2f", status="not run", reason="no nl2f"),
        _row("gist", value=5.0, n=20),
    ]
    md = render_markdown(spec, rows, profile="cpu", model="embedded", rendered_at="now")
    assert "| A | —¹ | — | — | —² | — | — |" in md
    assert "| B | —¹ | — | — | —³ | — | — |" in md
    assert "| C | —⁴ | — | — | —² | — | — |" in md
    assert "| D | 5.0 | — | — | —⁵ | — | — |" in md
    notes = [line for line in md.splitlines() if line and line[0] in "¹²³⁴⁵⁶"]
    assert notes == [
        "¹ not run: " + long.strip(),
        "² not run: no nl2f",
        "³ failed: RuntimeError: boom",
        "⁴ failed: no nl2f",
        "⁵ not run yet: no result in the results store; `promptintern reproduce --profile cpu --tables 9` runs it "
        "(`--tasks` for some tasks only; finished experiments are kept)",
    ]
    assert md.count(long.strip()) == 1 and md.count("outside the budget") == 12  # not in the cells
    # notes sit under the table, before n, the seeds and the provenance
    order = [md.index(x) for x in ("| D |", "¹ not run", "Test instances per task:", "Training seeds:", "Provenance:")]
    assert order == sorted(order)
    assert "Test instances per task: NL2Bash n = 20; NL2F n = — (no result)." in md
    assert "Training seeds: 0 for every result." in md
    lines = render_csv(spec, rows).splitlines()
    assert lines[1].endswith(",0,not run" + "," * 25 + long.strip())  # CSV keeps the full reason per row
    assert lines[2].endswith("no nl2f") and lines[4].endswith("RuntimeError: boom")


def _scores(directory, predictions):
    directory.mkdir(parents=True)
    refs = ["ls -l", "cd /tmp", "find . -name x", "grep -r foo ."]
    lines = [
        json.dumps({"id": str(i), "prediction": p, "reference": r, "sentence_bleu": 40.0})
        for i, (p, r) in enumerate(zip(predictions, refs, strict=True))
    ]
    (directory / "scores.jsonl").write_text("\n".join(lines) + "\n")
    return str(directory)


def test_seed_rows_of_one_cell_are_combined(tmp_path):
    from promptintern.harness.seeds import combine, metric_for

    spec = _spec2(("PromptIntern", "promptintern"), ("Query only", "zero-shot"), ("FT", "ft-full"))
    seed0 = _scores(tmp_path / "s0", ["ls", "cd /tmp", "find .", "grep foo"])
    seed1 = _scores(tmp_path / "s1", ["ls -l", "cd", "find . -name x", "grep -r foo ."])
    with ResultsStore(tmp_path / "r.sqlite") as store:
        for seed, value, tokens, directory in ((0, 10.0, 50.0, seed0), (1, 30.0, 70.0, seed1)):
            store.record(
                _row("promptintern", seed=seed, metric="bleu", value=value, ci_lo=1.0, ci_hi=2.0, n=4,
                     input_tokens_mean=tokens, directory=directory)
            )  # fmt: skip
        store.record(_row("zero-shot", metric="bleu", value=7.0, ci_lo=6.0, ci_hi=8.0, n=4))
        store.record(_row("ft-full", seed=0, metric="bleu", value=9.0, n=4))
        store.record(_row("ft-full", seed=1, status="failed", reason="CUDA out of memory"))
        rows = store.rows("9", "cpu")
    assert len(rows) == 5
    pi = [r for r in rows if r.method == "promptintern"]
    combined = combine(pi)
    lo, hi = metric_for("nl2bash").seeded_interval(
        [[json.loads(x) for x in (tmp_path / d / "scores.jsonl").read_text().splitlines()] for d in ("s0", "s1")]
    )
    assert (combined.ci_lo, combined.ci_hi) == (lo, hi) and (lo, hi) != (1.0, 2.0) and lo < hi
    md = render_markdown(spec, rows, profile="cpu", model="embedded", rendered_at="now")
    # the mean of the two seeds' values with the seed + instance interval, tokens averaged, marked †
    assert f"| PromptIntern† | 20.0 [{lo:.1f}, {hi:.1f}] | 60.0 | — |" in md
    assert "| Query only | 7.0 [6.0, 8.0] | — | — |" in md
    assert "| FT | 9.0¹ | — | — |" in md and "¹ failed (seed 1): CUDA out of memory" in md
    assert "Training seeds: 0, 1 where marked †; 0 otherwise. A result over several seeds is their mean" in md
    assert "Test instances per task: NL2Bash n = 4." in md
    records = {r["method"]: r for r in json.loads(json.dumps(records_of(spec, rows)))}
    assert records["promptintern"]["seeds"] == [0, 1] and records["promptintern"]["value"] == 20.0
    assert (records["promptintern"]["ci_lo"], records["promptintern"]["ci_hi"]) == (lo, hi)
    assert records["ft-full"]["seeds"] == [0]
    assert records["ft-full"]["seeds_not_ok"] == [{"seed": 1, "status": "failed", "reason": "CUDA out of memory"}]
    csv_lines = render_csv(spec, rows).splitlines()
    assert len(csv_lines) == 4 and csv_lines[1].startswith("9,PromptIntern,promptintern,,nl2bash,0;1,ok,bleu,20,")
    data = render_json(spec, rows, profile="cpu", model="embedded")
    assert sorted(data["provenance"]["rows"]) == [
        "ft-full//nl2bash/seed-0", "ft-full//nl2bash/seed-1", "promptintern//nl2bash/seed-0",
        "promptintern//nl2bash/seed-1", "zero-shot//nl2bash",
    ]  # fmt: skip


def test_seed_marks_go_on_cells_when_a_row_mixes_seed_lists():
    spec = _spec2(("A", "zero-shot"), ("B", "promptintern"), tasks=("nl2bash", "nl2f"))
    rows = [
        _row("zero-shot", value=1.0),
        _row("zero-shot", task="nl2f", value=2.0),
        _row("promptintern", value=3.0),
        _row("promptintern", seed=1, value=5.0),
        _row("promptintern", task="nl2f", value=6.0),
        _row("promptintern", task="nl2f", seed=2, value=8.0),
    ]
    md = render_markdown(spec, rows, profile="cpu", model="embedded", rendered_at="now")
    assert "| A | 1.0 | — | — | 2.0 | — | — |" in md
    assert "| B | 4.0† | — | — | 7.0‡ | — | — |" in md  # no scores.jsonl: no interval
    assert "Training seeds: 0, 1 where marked †; 0, 2 where marked ‡; 0 otherwise." in md
    same = render_markdown(spec, [r for r in rows if r.method == "promptintern"], profile="cpu", model="x")
    # only multi-seed lists: the first is the unmarked one
    assert "| B | 4.0 | — | — | 7.0† | — | — |" in same
    assert "Training seeds: 0, 2 where marked †; 0, 1 otherwise." in same
    one = render_markdown(spec, rows[2:4], profile="cpu", model="x")
    assert "| B | 4.0 | — | — | —¹ | — | — |" in one and "Training seeds: 0, 1 for every result." in one


def test_a_row_with_fewer_test_instances_than_most_is_footnoted_as_such():
    spec = _spec2(("A", "zero-shot"), ("B", "ft-none"), ("C", "ft-full"))
    rows = [_row("zero-shot", metric="bleu", value=5.0, n=250), _row("ft-none", metric="bleu", value=4.0, n=250),
            _row("ft-full", metric="bleu", value=30.0, n=100)]  # fmt: skip
    md = render_markdown(spec, rows, profile="cpu", model="embedded", rendered_at="now")
    assert "| A | 5.0 | — | — |" in md and "| C | 30.0¹ | — | — |" in md
    assert ("¹ over 100 test instances, most of the table's results over 250 (the reproduce sizing's row_overrides "
            "give those rows more for a claim's power)") in md  # fmt: skip
