"""lm-evaluation-harness (0.4.13) glue for every registered task: generated configs, documents, prompts, metrics.

Nothing here is per task. :func:`include_path` writes one lm-eval YAML config per registered task and prompt
(``promptintern_<task>``: query only; ``promptintern_<task>_full``: full template + k examples) into a
content-keyed cache folder and returns it for ``--include_path`` / ``TaskManager(include_path=...)``; the
built-ins and user task folders (``promptintern lm-eval --task ./my-task``) are served alike.

- Documents come from the suite's own loaders (``get_task(ref).load(split)``, nothing is downloaded).
- The context is the suite's :class:`~promptintern.prompting.prompt.Prompt`, rendered by :class:`PromptInternTask`
  exactly as the suite renders it (template in the system turn; ``Prompt.to_text()`` without a chat
  template), so lm-eval's ``num_fewshot`` sampler is not used (shots come from the ``_full`` variants).
- Generation length and stop strings are the task's (``max_new_tokens``, ``stop`` in its ``task.yaml``):
  :class:`PromptInternTask` fills ``generation_kwargs`` from the task unless the config sets them.
- Answers go through ``Task.extract``; :func:`process_results` scores each document with ``Task.score`` and
  :func:`corpus_metric` aggregates all documents' rows with the task's metric object (its corpus
  aggregation, as ``Task.score`` over all of them does), so the primary metric keeps its name (``pass@1``,
  ``em``, ``bleu``, ``exact_match``, ...) and the suite's 0-100 scale. The metric's per-instance means
  (``extra_fields`` such as NL2F's ``em_raw``; a corpus metric's sentence scores, ``sentence_bleu``) are
  lm-eval ``mean`` metrics next to it.

Options (``--metadata`` JSON / ``TaskManager(metadata=...)``): ``split`` (default ``test``), ``shots`` (k
of the ``_full`` variants; default the task's k), ``retrieval_fraction``, ``seed``, ``sandbox`` (backend of
``python_tests`` metrics: ``bwrap`` or ``docker``) and ``task_options`` (``{"nl2f": {"source": ...}}``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from lm_eval.api.task import ConfigurableTask

from promptintern.prompting.prompt import Prompt, build_prompt
from promptintern.tasks import BUILTIN_DIR, Instance, Task, TaskScore, get_task, resolve_task, task_folder
from promptintern.tasks import task_names as registered_tasks
from promptintern.tasks.metrics import Metric, PythonTests
from promptintern.tasks.spec import TaskFolderError

PREFIX = "promptintern_"
PROMPTS = ("query", "full")
SANDBOXES = ("bwrap", "docker")
#: lm-eval ``metadata.version`` of the generated configs (3.0: generated from the registry, generic metrics).
CONFIG_VERSION = 3.0
#: Where :func:`include_path` writes the configs: ``<PROMPTINTERN_HOME>/cache/lm-eval/<content hash>/``.
CACHE_KIND = "lm-eval"
_MODULE = "promptintern.tasks.lm_eval_support"  # what the configs' !function tags import


# -- task names and generated configs ----------------------------------------------------------------
def resolve_tasks(refs: Iterable[str | os.PathLike] | None = None) -> list[str]:
    """Registered names of ``refs`` (task names or task folders; default: every registered task).

    An invalid folder raises its own :class:`TaskFolderError`; unknown names raise one ``ValueError`` listing
    them all and the registered tasks.
    """
    if refs is None:
        return list(registered_tasks())
    names, unknown = [], []
    for ref in refs:
        try:
            name = resolve_task(ref)
        except TaskFolderError:
            raise
        except ValueError:
            unknown.append(str(ref))
            continue
        if name not in names:
            names.append(name)
    if unknown:
        raise ValueError(
            f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(registered_tasks())} "
            "or give a task folder (a folder with task.yaml)"
        )
    return names


def lm_eval_name(task: str, prompt: str = "query") -> str:
    """The lm-eval task of a registered task: ``promptintern_<task>`` or ``promptintern_<task>_full``.

    The task's name is kept verbatim: lm-eval accepts the ``-`` and ``.`` a ``task.yaml`` name may hold
    (task names are plain keys; lm-eval sanitises them itself where it makes file names).
    """
    _check_prompt(prompt)
    return PREFIX + task + ("_full" if prompt == "full" else "")


def task_names(prompt: str | None = None, tasks: Iterable[str | os.PathLike] | None = None) -> list[str]:
    """lm-eval task names of ``tasks`` (default: every registered task), query-only ones first."""
    names = resolve_tasks(tasks)
    kinds = PROMPTS if prompt is None else (prompt,)
    return [lm_eval_name(name, kind) for kind in kinds for name in names]


def _check_prompt(prompt: str) -> None:
    if prompt not in PROMPTS:
        raise ValueError(f"unknown prompt {prompt!r}; choose from {', '.join(PROMPTS)}")


def task_reference(name: str) -> str:
    """What a generated config names in ``dataset_kwargs.task_name``: a built-in's name, or a folder task's
    folder (absolute), so ``lm_eval`` in a fresh process finds it without ``$PROMPTINTERN_INCLUDE_PATH``."""
    folder = task_folder(name)
    return name if folder is None or folder.parent == BUILTIN_DIR else str(folder)


def mean_metrics(metric: Metric) -> dict[str, str]:
    """The per-instance means reported next to the primary metric: lm-eval metric -> key of the metric's
    aggregate (:meth:`Metric.mean_fields`, e.g. NL2F's ``em_raw``, NL2Bash's ``sentence_bleu``)."""
    return {f: key for f, key in metric.mean_fields().items() if f != metric.primary}


def config_text(name: str, prompt: str = "query") -> str:
    """The lm-eval YAML config of registered task ``name`` with ``prompt`` (``query`` or ``full``)."""
    _check_prompt(prompt)
    task = _task(name, "{}")
    metric = task.metric
    ref = task_reference(name)

    def q(value: Any) -> str:  # JSON is YAML: quoted scalars, flow mappings
        return json.dumps(value, ensure_ascii=False)

    what = (
        "query-only prompt (what a PromptIntern-trained model sees)"
        if prompt == "query"
        else "full prompt: template + k BLEU-retrieved training examples (the untrained zero-shot-full baseline)"
    )
    lines = [
        f"# {task.display_name} ({ref}) with the {what}.",
        f"# Generated by {_MODULE} from the task registry; do not edit.",
        "# Generation length and stop strings are the task's (max_new_tokens, stop), filled in by",
        "# PromptInternTask; documents, prompt and metric come from the suite.",
        f"task: {q(lm_eval_name(name, prompt))}",
        f"tag: {'promptintern' if prompt == 'query' else 'promptintern_full'}",
        f"class: !function {_MODULE}.PromptInternTask",
        f"custom_dataset: !function {_MODULE}.load_docs",
        f"dataset_kwargs: {q({'task_name': ref, 'prompt': prompt})}",
        "test_split: test",
        "output_type: generate_until",
        f"doc_to_text: !function {_MODULE}.doc_to_text",
        "doc_to_target: reference",
        "generation_kwargs: {do_sample: false, temperature: 0.0}",
        f"process_results: !function {_MODULE}.process_results",
        "metric_list:",
        f"  - metric: {q(metric.primary)}",
        f"    aggregation: !function {_MODULE}.corpus_metric",
        "    higher_is_better: true",
    ]
    for mean in mean_metrics(metric):
        lines += [f"  - metric: {q(mean)}", "    aggregation: mean", "    higher_is_better: true"]
    lines.append(f"metadata: {{version: {CONFIG_VERSION}}}")
    return "\n".join(lines) + "\n"


def config_files(tasks: Iterable[str | os.PathLike] | None = None) -> dict[str, str]:
    """``{file name: YAML}`` of both prompts of ``tasks`` (default: every registered task)."""
    return {
        f"{lm_eval_name(name, prompt)}.yaml": config_text(name, prompt)
        for name in resolve_tasks(tasks)
        for prompt in PROMPTS
    }


def include_path(tasks: Iterable[str | os.PathLike] | None = None) -> str:
    """The folder to give lm-eval's ``--include_path`` / ``TaskManager(include_path=...)``.

    It holds the generated configs of ``tasks`` (names or task folders; default: every registered task,
    ``$PROMPTINTERN_INCLUDE_PATH`` included) and is keyed by their content:
    ``<PROMPTINTERN_HOME>/cache/lm-eval/<hash>/``, written once, never changed. One folder for all tasks
    because lm-eval builds tags per include path (several paths would each redefine ``promptintern``).
    """
    from promptintern.paths import cache_dir

    files = config_files(tasks)
    digest = hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()[:16]
    parent = cache_dir(CACHE_KIND)
    target = parent / digest
    if not target.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=parent))
        for file, text in files.items():
            (tmp / file).write_text(text, encoding="utf-8")
        try:
            tmp.rename(target)
        except OSError:  # written meanwhile by another process: same content
            shutil.rmtree(tmp, ignore_errors=True)
            if not target.is_dir():
                raise
    return str(target)


# -- documents -------------------------------------------------------------------------------------
@cache
def _task(name: str, options: str) -> Task:
    return get_task(name, **json.loads(options))


_LOADED: dict[tuple[str, str, str], dict[str, Instance]] = {}


def _instances(name: str, split: str, options: str, *, reload: bool = False) -> dict[str, Instance]:
    """Instances by id; :func:`load_docs` reloads them, so metrics see exactly the documents' instances."""
    key = (name, split, options)
    if reload or key not in _LOADED:
        _LOADED[key] = {inst.id: inst for inst in _task(name, options).load(split)}
    return _LOADED[key]


def _options(task_name: str, task_options: dict[str, Any] | None) -> str:
    """The task's constructor options as canonical JSON (part of every document, for the metric)."""
    if task_options is not None and not isinstance(task_options, dict):
        raise ValueError(f"task_options must map task names to option dicts, got {task_options!r}")
    own = (task_options or {}).get(task_name, {})
    if not isinstance(own, dict):
        raise ValueError(f"task_options[{task_name!r}] must be a dict, got {own!r}")
    return json.dumps(own, sort_keys=True)


def runs_code(task: Task) -> bool:
    """Whether the task's metric executes predictions (``python_tests``): it needs a sandbox."""
    return isinstance(task.metric, PythonTests)


def prompts_for(
    task: Task,
    instances: Sequence[Instance],
    prompt: str,
    *,
    shots: int | None = None,
    retrieval_fraction: float = 1.0,
    seed: int = 0,
) -> list[Prompt]:
    """Every instance's prompt: query only, or full template + top-k training examples (``zero-shot-full``)."""
    _check_prompt(prompt)
    if prompt == "query":
        return [build_prompt(task, inst) for inst in instances]
    from promptintern.methods.stages import example_map

    k = task.shots if shots is None else int(shots)
    if k < 0:
        raise ValueError(f"shots must be >= 0, got {shots!r}")
    examples = example_map(instances, task.load("train"), k, fraction=retrieval_fraction, seed=seed)
    template = task.template()
    return [build_prompt(task, inst, template, examples[inst.id]) for inst in instances]


def load_docs(
    task_name: str,
    prompt: str = "query",
    *,
    split: str = "test",
    shots: int | None = None,
    retrieval_fraction: float = 1.0,
    seed: int = 0,
    sandbox: str = "bwrap",
    task_options: dict[str, Any] | None = None,
    **_metadata: Any,
):
    """``custom_dataset`` for lm-eval: ``{"test": Dataset}``, one document per instance of ``split``.

    ``task_name`` is a registered name or a task folder. lm-eval calls it with the task's ``metadata``
    (model arguments and ``--metadata`` included) and its ``dataset_kwargs`` (``task_name``, ``prompt``);
    unknown keys are ignored.
    """
    import datasets

    name = resolve_tasks([task_name])[0]
    options = _options(name, task_options)
    task = _task(name, options)
    if runs_code(task):
        if sandbox not in SANDBOXES:
            raise ValueError(f"unknown sandbox {sandbox!r}; choose from {', '.join(SANDBOXES)}")
        from promptintern.sandbox import get_backend

        get_backend(sandbox)  # fail before generation, not after, when the sandbox cannot run here
    instances = list(_instances(name, split, options, reload=True).values())
    rendered = prompts_for(
        task, instances, prompt, shots=shots, retrieval_fraction=retrieval_fraction, seed=seed
    )
    rows = [
        {
            "task": name,
            "split": split,
            "options": options,
            "sandbox": sandbox,
            "id": inst.id,
            "query": inst.query,
            "reference": inst.reference,
            "instruction": p.instruction,
            "documents": p.documents,
            "examples": list(p.examples),
        }
        for inst, p in zip(instances, rendered, strict=True)
    ]
    strings = ("task", "split", "options", "sandbox", "id", "query", "reference", "instruction", "documents")
    features = datasets.Features(
        {key: datasets.Value("string") for key in strings}
        | {"examples": datasets.Sequence(datasets.Value("string"))}
    )
    # always under "test" (the YAML's test_split): the split read is the documents' ``split`` field
    return {"test": datasets.Dataset.from_list(rows, features=features)}


def doc_prompt(doc: dict[str, Any]) -> Prompt:
    """The suite's :class:`Prompt` of a document."""
    return Prompt(
        query=doc["query"],
        instruction=doc["instruction"],
        documents=doc["documents"],
        examples=tuple(doc["examples"] or ()),
    )


def doc_to_text(doc: dict[str, Any]) -> str:
    """``Prompt.to_text()``: the plain-text model input (no chat template)."""
    return doc_prompt(doc).to_text()


def generation_kwargs(task_ref: str, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``given`` with the task's stop strings (``until``) and ``max_gen_toks`` where it does not set them."""
    task = _task(resolve_tasks([task_ref])[0], "{}")
    out = dict(given or {})
    out.setdefault("until", list(task.stop))
    out.setdefault("max_gen_toks", task.max_new_tokens)
    return out


class PromptInternTask(ConfigurableTask):
    """A ``ConfigurableTask`` whose context is the suite's own rendering of :func:`doc_prompt`.

    ``generation_kwargs`` get the task's ``stop`` (as ``until``) and ``max_new_tokens`` (as ``max_gen_toks``)
    unless the config sets them (``--gen_kwargs`` still overrides both).

    With ``apply_chat_template`` the messages are ``Prompt.to_messages()`` (template as the system turn,
    examples + question as the user turn) rendered with a generation prompt, as ``Prompt.render``
    does; otherwise ``Prompt.to_text()``. A ``system_instruction`` is put before the template.
    """

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        config = {k: v for k, v in (config or {}).items() if k != "class"}
        ref = (config.get("dataset_kwargs") or {}).get("task_name")
        if ref is not None and config.get("output_type", "generate_until") == "generate_until":
            config["generation_kwargs"] = generation_kwargs(ref, config.get("generation_kwargs"))
        super().__init__(config=config, **kwargs)

    def fewshot_context(
        self,
        doc: dict[str, Any],
        num_fewshot: int,
        system_instruction: str | None = None,
        apply_chat_template: bool = False,
        fewshot_as_multiturn: bool = False,
        chat_template=None,
        gen_prefix: str | None = None,
    ) -> str:
        if num_fewshot:
            raise ValueError(
                f"{self.config.task}: num_fewshot={num_fewshot} is not supported; the examples of the "
                "'_full' variants are retrieved by BLEU (set their count with metadata 'shots')"
            )
        prompt = doc_prompt(doc)
        if apply_chat_template and chat_template is not None:
            messages = prompt.to_messages()
            if system_instruction:
                if messages[0]["role"] == "system":
                    messages[0]["content"] = f"{system_instruction}\n\n{messages[0]['content']}"
                else:
                    messages.insert(0, {"role": "system", "content": system_instruction})
            return chat_template(messages, add_generation_prompt=True)
        text = prompt.to_text()
        return f"{system_instruction}\n\n{text}" if system_instruction else text


# -- metrics ---------------------------------------------------------------------------------------
def _instance(doc: dict[str, Any]) -> Instance:
    return _instances(doc["task"], doc["split"], doc["options"])[doc["id"]]


def scoring_options(task: Task, sandbox: str) -> dict[str, Any]:
    """``Task.score`` options of one document: the sandbox of a metric that runs code, one at a time."""
    return {"backend": sandbox, "workers": 1, "progress": False} if runs_code(task) else {}


def process_results(doc: dict[str, Any], results: Sequence[str]) -> dict[str, Any]:
    """Every metric of one document: ``Task.score`` of its extracted prediction.

    The primary metric's value is an item for :func:`corpus_metric`: the document's configuration, id,
    prediction, per-instance row of the metric and ``value`` (the metric of this document alone); the
    per-instance means (:func:`mean_metrics`) are numbers on the 0-100 scale that lm-eval averages.
    """
    task = _task(doc["task"], doc["options"])
    prediction = task.extract(results[0] if results else "")
    score = task.score([_instance(doc)], {doc["id"]: prediction}, **scoring_options(task, doc["sandbox"]))
    item = {
        "config": [doc["task"], doc["split"], doc["options"]],
        "id": doc["id"],
        "prediction": prediction,
        "row": score.per_instance[0],
        "value": score.metrics[score.primary],
    }
    means = {name: score.metrics[key] for name, key in mean_metrics(task.metric).items()}
    return {task.metric.primary: item} | means


def corpus_score(items: Sequence[Mapping[str, Any]]) -> TaskScore:
    """The task's :class:`TaskScore` of all documents' items: the metric's corpus aggregation of their rows
    (what ``Task.score`` over the same predictions returns; rows are per instance)."""
    configs = {json.dumps(item["config"]) for item in items}
    if len(configs) != 1:
        raise ValueError(
            f"corpus_metric needs the documents of one task configuration, got {sorted(configs)}"
        )
    name, _split, options = json.loads(configs.pop())
    task = _task(name, options)
    metric = task.metric
    rows = [dict(item["row"]) for item in items]
    return TaskScore(
        task.name,
        metric.aggregate(rows),
        rows,
        metric.primary,
        signature=metric.signature(rows),
        metric=metric.name,
    )


def corpus_metric(items: Sequence[Mapping[str, Any]]) -> float:
    """The primary metric (0-100) over all documents: :func:`corpus_score`'s value (0 with no documents)."""
    return float(corpus_score(items).value) if items else 0.0
