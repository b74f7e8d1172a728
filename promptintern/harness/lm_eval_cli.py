"""``promptintern lm-eval``: the suite's tasks through lm-evaluation-harness (HF backend).

A thin wrapper over ``lm_eval.simple_evaluate`` with the ``promptintern_*`` task configs that
``promptintern.tasks.lm_eval_support.include_path`` generates from the task registry (a built-in, a task
registered with ``--include-path`` / ``$PROMPTINTERN_INCLUDE_PATH``, or a task folder given directly): it
resolves ``embedded`` and other suite model names, loads a PromptIntern LoRA adapter with ``peft``, picks
device and dtype as ``promptintern.serving.models.load_model`` does and applies the model's chat template when it
has one (as ``Prompt.render`` does). Results keep the suite's 0-100 scale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

TASK_HELP = (
    "Tasks (repeatable; default: every registered task): a name (mbpp, nl2f, nl2bash or one registered "
    "with --include-path) or a task folder (a folder with task.yaml)."
)


def _task_refs(tasks: list[str] | None, prompt: str | None) -> tuple[list[str] | None, str]:
    """``--task`` values and ``--prompt`` as :func:`run_lm_eval` takes them, accepting the lm-eval names the
    docs and the output table use as well: ``promptintern_<task>``, ``promptintern_<task>_full`` (the full
    prompt) and the tags ``promptintern`` / ``promptintern_full`` (every registered task)."""
    from promptintern.errors import UserError
    from promptintern.tasks import task_names
    from promptintern.tasks.lm_eval_support import PREFIX

    registered = set(task_names())
    refs: list[str] = []
    implied: dict[str, str] = {}  # prompt -> the name that implies it
    every = False
    for ref in tasks or ():
        name, kind = str(ref), None
        if not Path(name).exists():
            if name in (PREFIX.rstrip("_"), PREFIX + "full") and name not in registered:  # lm-eval's tags
                every, kind = True, "full" if name.endswith("full") else "query"
                name = ""
            elif name.startswith(PREFIX) and name not in registered:
                base = name[len(PREFIX) :]
                if base in registered:
                    name, kind = base, "query"
                elif base.endswith("_full") and base[: -len("_full")] in registered:
                    name, kind = base[: -len("_full")], "full"
        if kind is not None:
            implied.setdefault(kind, str(ref))
        if name and name not in refs:
            refs.append(name)
    if len(implied) > 1:
        raise UserError(
            f"--task {implied['query']} (query-only prompt) and --task {implied['full']} (full prompt) need "
            "separate runs: one prompt per run"
        )
    if implied:
        ((kind, ref),) = implied.items()
        if prompt is not None and prompt != kind:
            raise UserError(f"--task {ref} is the {kind} prompt's task but --prompt is {prompt}; drop one")
        prompt = kind
    return (None if every or not refs else refs), prompt or "query"  # None: every registered task


def _lm_eval_names(tasks: list[str] | None, prompt: str) -> tuple[list[str], list[str]]:
    """The registered names of ``tasks`` (names or folders; default: all) and their lm-eval task names."""
    from promptintern.tasks.lm_eval_support import lm_eval_name, resolve_tasks

    names = resolve_tasks(tasks or None)
    return names, [lm_eval_name(name, prompt) for name in names]


def run_lm_eval(
    tasks: list[str] | None = None,
    *,
    prompt: str = "query",
    model: str = "embedded",
    adapter: str | Path | None = None,
    split: str = "test",
    limit: int | None = None,
    shots: int | None = None,
    batch_size: int = 1,
    device: str | None = None,
    dtype: str | None = None,
    chat_template: bool | None = None,
    max_new_tokens: int | None = None,
    sandbox: str = "bwrap",
    log_samples: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` (+ ``adapter``) on ``tasks`` (registered names or task folders; default: every
    registered task); returns ``simple_evaluate``'s dict.

    ``chat_template=None`` applies the tokenizer's chat template when it has one.
    """
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from promptintern.serving.models import load_tokenizer, resolve
    from promptintern.tasks.lm_eval_support import include_path

    registered, names = _lm_eval_names(tasks, prompt)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise ValueError(f"{adapter} is not a peft adapter folder (no adapter_config.json)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    if chat_template is None:
        chat_template = bool(getattr(load_tokenizer(model), "chat_template", None))
    model_args: dict[str, Any] = {"pretrained": resolve(model), "device": device, "dtype": dtype}
    if adapter is not None:
        model_args["peft"] = str(adapter)
    metadata: dict[str, Any] = {"split": split, "sandbox": sandbox}
    if shots is not None:
        metadata["shots"] = shots
    manager = TaskManager(include_path=include_path(registered), include_defaults=False, metadata=metadata)
    results = simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=names,
        batch_size=batch_size,
        limit=limit,
        task_manager=manager,
        apply_chat_template=chat_template,
        gen_kwargs={"max_gen_toks": max_new_tokens} if max_new_tokens else None,
        log_samples=log_samples,
    )
    if results is None:  # non-zero ranks of a distributed run
        raise RuntimeError("lm-eval returned no results (not the main process)")
    results["promptintern"] = {
        "model": model,
        "adapter": str(adapter) if adapter else None,
        "prompt": prompt,
        "tasks": registered,
        "split": split,
        "limit": limit,
        "chat_template": chat_template,
    }
    return results


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Metrics per task (``"pass@1,none"`` -> ``"pass@1"``), sample counts and the run's settings."""
    metrics = {
        task: {k.split(",")[0]: v for k, v in row.items() if "," in k and v != "N/A"}
        for task, row in results["results"].items()
    }
    return {**results.get("promptintern", {}), "metrics": metrics, "n": results.get("n-samples", {})}


def _sample_metric(value: Any) -> float | None:
    """A sample's value of one metric: a number, or the ``value`` of a corpus metric's item."""
    if isinstance(value, dict):
        value = value.get("value")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def write_predictions(results: dict[str, Any], directory: Path) -> list[Path]:
    """``<lm-eval task>.jsonl`` per task: ``task_id``, extracted ``prediction``, raw ``output``, metrics
    (each metric of the document alone, 0-100).

    The files are predictions files of the suite (``promptintern eval --predictions F [--partial]``).
    """
    from promptintern.evaluation.predictions import write_jsonl
    from promptintern.tasks import get_task

    paths = []
    for name, samples in results.get("samples", {}).items():
        task = get_task(samples[0]["doc"]["task"]) if samples else None
        rows = []
        for s in samples:
            output = s["filtered_resps"][0] if s["filtered_resps"] else ""
            metrics = {k: _sample_metric(s.get(k)) for k in s.get("metrics", [])}
            metrics = {k: v for k, v in metrics.items() if v is not None}
            rows.append(
                {"task_id": s["doc"]["id"], "prediction": task.extract(output), "output": output} | metrics
            )
        path = directory / f"{name}.jsonl"
        write_jsonl(path, rows)
        paths.append(path)
    return paths


def lm_eval_cmd(
    task: list[str] = typer.Option(None, "--task", "-t", help=TASK_HELP),
    prompt: str | None = typer.Option(
        None,
        help="query: query-only prompt (PromptIntern); full: template + k examples (untrained). Default: "
        "query, or full for --task promptintern_<task>_full.",
    ),
    model: str = typer.Option("embedded", help="'embedded', a HF id or a local checkpoint path."),
    adapter: Path | None = typer.Option(
        None, help="A peft LoRA adapter folder (a PromptIntern run's train/adapter)."
    ),
    split: str = typer.Option("test", help="Split to evaluate."),
    limit: int | None = typer.Option(None, help="Evaluate the first N instances of each task."),
    shots: int | None = typer.Option(None, help="Examples in --prompt full (default: the task's paper k)."),
    batch_size: int = typer.Option(1, help="Generation batch size."),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:0, ... (default: cuda if available)."),
    dtype: str | None = typer.Option(
        None, help="float32, bfloat16, ... (default: bfloat16 on cuda, else float32)."
    ),
    chat_template: bool | None = typer.Option(
        None,
        "--chat-template/--no-chat-template",
        help="Apply the chat template (default: when the model has one).",
    ),
    max_new_tokens: int | None = typer.Option(None, help="Override the task's generation length."),
    sandbox: str = typer.Option(
        "bwrap",
        help="Execution backend of tasks scored by running code (python_tests: MBPP): bwrap or docker.",
    ),
    out: Path | None = typer.Option(None, help="Write lm-eval's full results JSON here."),
    predictions_dir: Path | None = typer.Option(
        None, help="Write <task>.jsonl predictions (task_id, prediction, output, metrics) here."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    print_include_path: bool = typer.Option(
        False,
        "--print-include-path",
        help="Print the folder of the generated lm-eval configs of --task (default: all registered tasks), "
        "for `lm_eval --include_path`, and exit.",
    ),
) -> None:
    """Evaluate a model on the suite's tasks (or a task folder) with lm-evaluation-harness and their metrics.

    ``--task`` also takes the lm-eval names: ``promptintern_<task>``, ``promptintern_<task>_full`` and the
    tags ``promptintern`` and ``promptintern_full``."""
    from promptintern.errors import UserError, fail
    from promptintern.io import write_json

    try:
        tasks, prompt = _task_refs(task, prompt)
    except UserError as exc:
        fail(exc, as_json=as_json)
    if print_include_path:
        from promptintern.tasks.lm_eval_support import include_path

        try:
            typer.echo(include_path(tasks))
        except ValueError as exc:
            fail(exc, as_json=as_json)
        return
    try:
        results = run_lm_eval(
            tasks,
            prompt=prompt,
            model=model,
            adapter=adapter,
            split=split,
            limit=limit,
            shots=shots,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            chat_template=chat_template,
            max_new_tokens=max_new_tokens,
            sandbox=sandbox,
            log_samples=predictions_dir is not None,
        )
    except (ValueError, UserError) as exc:  # unknown task, bad adapter folder, unavailable sandbox
        fail(exc, as_json=as_json)
    summary = summarize(results)
    if out:
        write_json(out, {k: v for k, v in results.items() if k != "samples"})
    if predictions_dir:
        summary["predictions"] = [str(p) for p in write_predictions(results, predictions_dir)]
    if as_json:
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("task", "metric", "value", "n", title=f"lm-eval: {model} ({prompt} prompt, {split})")
    for name, metrics in summary["metrics"].items():
        n = summary["n"].get(name, {}).get("effective", "")
        for key, value in metrics.items():
            if not key.endswith("_stderr"):
                stderr = metrics.get(f"{key}_stderr")
                shown = f"{value:.2f}" + (f" ± {stderr:.2f}" if isinstance(stderr, float) else "")
                table.add_row(name, key, shown, str(n))
    Console().print(table)
