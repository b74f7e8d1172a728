"""User task folders: a task.yaml + template.yaml + data and no Python, run through every command."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from promptintern.cli import app
from promptintern.tasks import TaskFolderError, get_task, include_path, resolve_task, task_names
from promptintern.tasks.records import query_text
from promptintern.testing import write_task_folder

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_a_folder_is_a_task(tmp_path):
    folder = write_task_folder(tmp_path)
    task = get_task(folder)
    assert (task.name, task.title, task.shots, task.max_new_tokens, task.stop) == ("reverse", "Reverse", 2, 12, ("\n[W]",))
    assert "reverse" in task_names() and resolve_task(str(folder)) == "reverse"
    test = task.load("test")
    assert [i.query for i in test][:1] == ["[W] island [/W]"] and test[0].reference == "dnalsi"
    assert test[0].meta["word"] == "island"  # every column is kept
    assert task.format_answer("dnalsi") == "```text\ndnalsi\n```"
    assert task.extract("Sure:\n```text\ndnalsi\n```\nmore") == "dnalsi"  # inverse of answer_format
    assert task.extract("dnalsi") == "dnalsi"
    assert "<API Doc 1> reverse(word)" in task.template().text
    score = task.score(test, {i.id: i.reference for i in test})
    assert (score.value, score.metric, score.primary) == (100.0, "exact_match", "exact_match")


def test_csv_data_user_metric_and_no_id_field(tmp_path):
    folder = write_task_folder(tmp_path, fields={"id": None, "query": "word", "answer": "reversed"},
                               metric="my_metric:half_credit")  # fmt: skip
    (folder / "my_metric.py").write_text(
        "def half_credit(prediction, reference, record):\n"
        "    return 1.0 if prediction == reference else 0.5 if prediction[:1] == reference[:1] else 0.0\n"
    )
    (folder / "data" / "test.csv").write_text("word,reversed\nabc,cba\nxyz,zyx\n")
    spec = yaml.safe_load((folder / "task.yaml").read_text())
    spec["data"]["test"] = "data/test.csv"
    (folder / "task.yaml").write_text(yaml.safe_dump(spec))
    task = get_task(folder)
    test = task.load("test")
    assert [i.id for i in test] == ["2", "3"]  # the CSV line numbers
    score = task.score(test, {"2": "cba", "3": "zzz"})
    assert score.value == pytest.approx(75.0) and score.per_instance[1]["score"] == 0.5


def test_a_group_column_clusters_the_intervals_and_keeps_the_run_keys(tmp_path):
    from promptintern.harness.seeds import split_groups

    fields = {"id": "id", "query": "word", "answer": "reversed", "group": "family"}
    folder = write_task_folder(tmp_path, name="grouped", fields=fields)
    path = folder / "data" / "test.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r | {"family": i // 2, "group": "g"}) + "\n" for i, r in enumerate(rows)))
    task, plain = get_task(folder), get_task(write_task_folder(tmp_path, name="plain"))
    assert [i.group for i in task.load("test")] == ["0", "0", "1", "1"]
    spec = task.spec.model_copy(update={"query_format": "{query} ({group})"})
    assert query_text(spec, json.loads(path.read_text().splitlines()[0])) == "island (g)"  # a column stays data
    assert [i.group for i in task.load("train")] == [None] * 8  # needed in the test split only
    assert [i.group for i in plain.load("test")] == [None] * 4
    split_groups.cache_clear()
    assert split_groups("grouped") == {"test-0": "0", "test-1": "0", "test-2": "1", "test-3": "1"}
    # the column changes the intervals, not the results: the run keys are those of the same task without it
    assert task.identity()["spec"] | {"name": "plain"} == plain.identity()["spec"]
    path.write_text("".join(json.dumps(r | ({"family": 1} if i else {})) + "\n" for i, r in enumerate(rows)))
    with pytest.raises(TaskFolderError, match=r"test.jsonl:1: field 'family' \(group\) is missing or empty"):
        get_task(folder).load("test")


def test_bad_folder_lists_every_problem_with_file_and_line(tmp_path):
    folder = write_task_folder(tmp_path, shots=-1, metrc="bleu")
    (folder / "data" / "train.jsonl").write_text('{"id": "a", "word": "x", "reversed": "x"}\n{"id": "a", "word": "y"}\nnot json\n')
    (folder / "documents.yaml").unlink()
    with pytest.raises(TaskFolderError) as info:
        get_task(folder)
    msg = str(info.value)
    assert "task.yaml:" in msg and "shots: Input should be greater than or equal to 0" in msg
    assert "metrc: unknown key" in msg
    assert "documents.yaml" in msg
    assert "train.jsonl:2: field 'reversed' (answer) is missing or empty" in msg
    assert "train.jsonl:3: invalid JSON" in msg
    res = runner.invoke(app, ["tokens", "--task", str(folder)])
    assert res.exit_code != 0


def test_include_path_registers_every_folder_under_it(tmp_path, monkeypatch):
    write_task_folder(tmp_path / "tasks", "rev-a")
    write_task_folder(tmp_path / "tasks" / "nested", "rev-b")
    assert sorted(include_path(tmp_path / "tasks")) == ["rev-a", "rev-b"]
    with pytest.raises(ValueError, match="already registered"):
        include_path(write_task_folder(tmp_path / "other", "rev-a").parent)


def test_cli_tokens_eval_and_smoke_run_on_a_folder(tmp_path, tiny_model_dir):
    folder = write_task_folder(tmp_path)
    res = _run("eval", "--task", folder, "--oracle", "--json")
    assert json.loads(res.stdout)["metrics"]["exact_match"] == 100.0
    res = _run("tokens", "--task", folder, "--profile", "smoke", "--model", tiny_model_dir, "--json")
    tokens = json.loads(res.stdout)
    assert tokens["task"] == "reverse" and tokens["n"] == 4
    full, query = tokens["mean_input_tokens"]["template + k-shots"], tokens["mean_input_tokens"]["PromptIntern (query only)"]
    assert full > 3 * query > 0
    res = _run("run", "--task", folder, "--method", "promptintern", "--profile", "smoke", "--model", tiny_model_dir,
               "--baseline", "zero-shot-full", "--json")  # fmt: skip
    result = json.loads(res.stdout)
    assert (result["primary"], result["n"]) == ("exact_match", 3)  # smoke's task_defaults: test_limit 3
    assert "/runs/smoke/reverse/promptintern/" in result["directory"]
    cmp = result["comparison"]
    assert cmp["reference"]["method"] == "zero-shot-full" and cmp["input_token_saving"] > 0.5


def test_include_path_option_and_data_stats(tmp_path):
    write_task_folder(tmp_path / "mine")
    res = _run("--include-path", tmp_path / "mine", "data", "stats", "--task", "reverse", "--json")
    assert json.loads(res.stdout) == {"reverse": {"train": 8, "test": 4}}


def test_profile_sections_for_folder_tasks(tmp_path):
    from promptintern.profile import ProfileError, load_profile

    write_task_folder(tmp_path / "tasks")
    good = {"name": "mine", "include_path": ["tasks"], "tasks": {"reverse": {"test_limit": 2}}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(good))
    assert load_profile(str(tmp_path / "p.yaml")).task("reverse").test_limit == 2
    bad = {"name": "mine", "include_path": ["tasks"], "tasks": {"reverse": {"test_limt": 2}, "revers": {}}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ProfileError) as info:
        load_profile(str(tmp_path / "bad.yaml"))
    msg = str(info.value)
    assert msg.startswith(str(tmp_path / "bad.yaml")) and "tasks.reverse.test_limt" in msg and "tasks.revers: unknown task" in msg
