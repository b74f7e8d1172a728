"""Accuracy and latency figures from store rows: one point per configuration, seeds combined, nothing for a
task without usable rows."""

from promptintern.harness.plots import combine_seeds, render_accuracy_latency, render_plots
from promptintern.harness.store import RunRow
from promptintern.profile import load_profile

PNG = b"\x89PNG\r\n\x1a\n"


def _row(table, method, task="nl2bash", **kw):
    base = dict(table_id=table, method=method, task=task, model="embedded", profile="cpu", metric="bleu")
    return RunRow(**(base | kw))


ROWS = [
    _row("1", "llmlingua", value=4.7, ci_lo=0.0, ci_hi=10.9, input_tokens_mean=255.3, label="LLMLingua"),
    _row("1", "promptintern", variant="tau-0.3", value=2.0, input_tokens_mean=320.0, seed=0),
    _row("1", "promptintern", variant="tau-0.3", value=4.0, input_tokens_mean=322.0, seed=1),
    _row("5", "promptintern", variant="tau-0.3", value=99.0, input_tokens_mean=1.0),  # same config: table 1's
    _row("1", "llmlingua2", status="not run", reason="no checkpoint"),
    _row("2", "zero-shot", value=None, input_tokens_mean=30.0),  # no value: skipped
    _row("8", "promptintern", value=2.0, input_tokens_mean=65.3, latency_s_mean=0.68, ttft_s_mean=0.2,
         latency_source="server"),
    _row("8", "gist", value=1.0, input_tokens_mean=20.0, latency_source="not measured: own loop"),
    _row("8", "ft-full", value=3.0, input_tokens_mean=900.0, latency_s_mean=3.6, latency_source="server"),
    _row("1", "llmlingua", task="nl2f", status="not run", reason="not in the subset"),
]  # fmt: skip


def test_combine_seeds_groups_configurations():
    combined = combine_seeds(ROWS)
    assert len(combined) == len(ROWS) - 1
    pi = [r for r in combined if r.table_id == "1" and r.method == "promptintern"]
    assert len(pi) == 1 and pi[0].value == 3.0 and pi[0].input_tokens_mean == 321.0


def test_accuracy_and_latency_plots(tmp_path, monkeypatch):
    import promptintern.harness.plots as plots

    seen = {}
    real_accuracy, real_latency = plots.accuracy_plot, plots.latency_plot

    def accuracy(rows, task, path):
        seen["accuracy", task] = sorted((r.table_id, r.method, r.value) for r in plots._per_config(
            rows, task, lambda r: r.value is not None))  # fmt: skip
        return real_accuracy(rows, task, path)

    def latency(rows, task, path):
        seen["latency", task] = sorted(r.method for r in plots._per_config(
            rows, task, lambda r: r.latency_source == "server" and r.latency_s_mean is not None))  # fmt: skip
        return real_latency(rows, task, path)

    monkeypatch.setattr(plots, "accuracy_plot", accuracy)
    monkeypatch.setattr(plots, "latency_plot", latency)
    paths = render_accuracy_latency(ROWS, tmp_path)
    assert [p.name for p in paths] == ["accuracy-nl2bash.png", "latency-nl2bash.png"]
    for p in paths:
        assert p.stat().st_size > 1000 and p.read_bytes()[:8] == PNG
    # accuracy: tables 1-7 only, one point per (method, variant) from the lowest table, seeds averaged
    assert seen["accuracy", "nl2bash"] == [("1", "llmlingua", 4.7), ("1", "promptintern", 3.0)]
    assert seen["latency", "nl2bash"] == ["ft-full", "promptintern"]  # measured through the server only
    assert not (tmp_path / "accuracy-nl2f.png").exists() and not (tmp_path / "latency-nl2f.png").exists()
    assert render_accuracy_latency([r for r in ROWS if r.task == "nl2f"], tmp_path / "none") == []


def test_render_plots_writes_the_new_figures(tmp_path):
    paths = {p.name for p in render_plots(ROWS, load_profile("cpu"), tmp_path)}
    assert paths == {"pareto-nl2bash.png", "accuracy-nl2bash.png", "latency-nl2bash.png", "schedules.png"}
    assert all((tmp_path / name).stat().st_size > 0 for name in paths)
