"""lm-evaluation-harness (0.4.13) glue for MBPP, NL2F and NL2Bash: documents, prompts and metrics.

The YAML configs under ``tasks/<task>/lm_eval/`` point here with ``!function``. Documents come from the
suite's own loaders (``get_task(name).load(split)``, nothing is downloaded); prompts are the suite's
:class:`~promptintern.prompt.Prompt` (query only, or full template + k BLEU-retrieved training examples as
``zero-shot-full`` builds them); answers go through ``Task.extract`` and are scored by ``Task.score``.

Differences from lm-eval's own tasks: the context is rendered by :class:`PromptInternTask` exactly as the
suite renders it (template in the system turn; ``Prompt.to_text()`` without a chat template), so lm-eval's
``num_fewshot`` sampler is not used (shots come from the ``_full`` variants). Scores keep the suite's 0-100
scale. Options (``--metadata`` JSON / ``TaskManager(metadata=...)``): ``split`` (default ``test``),
``shots`` (k of the ``_full`` variants; default the task's paper k), ``retrieval_fraction``, ``seed``,
``sandbox`` (MBPP backend: ``bwrap`` or ``docker``) and ``task_options`` (``{"nl2f": {"source": ...}}``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from lm_eval.api.task import ConfigurableTask

from promptintern.prompt import Prompt, build_prompt
from promptintern.tasks import TASK_NAMES, Instance, Task, get_task

PREFIX = "promptintern_"
PROMPTS = ("query", "full")
SANDBOXES = ("bwrap", "docker")
TASKS_DIR = Path(__file__).resolve().parent


def include_path() -> str:
    """The folder to give lm-eval's ``--include_path`` / ``TaskManager(include_path=...)``.

    One folder (the tasks package): lm-eval builds tags per include path, so three separate paths would
    each redefine the ``promptintern`` tag instead of adding to it. Its other YAML files are skipped.
    """
    return str(TASKS_DIR)


def task_names(prompt: str | None = None) -> list[str]:
    """lm-eval task names: ``promptintern_<task>`` (query only) and ``promptintern_<task>_full``."""
    kinds = PROMPTS if prompt is None else (prompt,)
    return [PREFIX + name + ("_full" if kind == "full" else "") for kind in kinds for name in TASK_NAMES]


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
    if prompt not in PROMPTS:
        raise ValueError(f"unknown prompt {prompt!r}; choose from {', '.join(PROMPTS)}")
    if prompt == "query":
        return [build_prompt(task, inst) for inst in instances]
    from promptintern.stages import example_map

    k = task.paper_shots[0] if shots is None else int(shots)
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

    lm-eval calls it with the task's ``metadata`` (model arguments and ``--metadata`` included) and its
    ``dataset_kwargs`` (``task_name``, ``prompt``); unknown keys are ignored.
    """
    import datasets

    if task_name not in TASK_NAMES:
        raise ValueError(f"unknown task {task_name!r}; choose from {', '.join(TASK_NAMES)}")
    if task_name == "mbpp":
        if sandbox not in SANDBOXES:
            raise ValueError(f"unknown MBPP sandbox {sandbox!r}; choose from {', '.join(SANDBOXES)}")
        from promptintern.sandbox import get_backend

        get_backend(sandbox)  # fail before generation, not after, when the sandbox cannot run here
    options = _options(task_name, task_options)
    task = _task(task_name, options)
    instances = list(_instances(task_name, split, options, reload=True).values())
    rendered = prompts_for(
        task, instances, prompt, shots=shots, retrieval_fraction=retrieval_fraction, seed=seed
    )
    rows = [
        {
            "task": task_name,
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


class PromptInternTask(ConfigurableTask):
    """A ``ConfigurableTask`` whose context is the suite's own rendering of :func:`doc_prompt`.

    With ``apply_chat_template`` the messages are ``Prompt.to_messages()`` (template as the system turn,
    examples + question as the user turn) rendered with a generation prompt, as ``Prompt.render``
    does; otherwise ``Prompt.to_text()``. A ``system_instruction`` is put before the template.
    """

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        config = {k: v for k, v in (config or {}).items() if k != "class"}
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


def _score(doc: dict[str, Any], prediction: str, **options: Any) -> dict[str, float]:
    """``Task.score`` of one document's extracted prediction."""
    task = _task(doc["task"], doc["options"])
    return task.score([_instance(doc)], {doc["id"]: prediction}, **options).metrics


def _prediction(doc: dict[str, Any], results: Sequence[str]) -> str:
    return _task(doc["task"], doc["options"]).extract(results[0] if results else "")


def process_mbpp(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    """pass@1 (0 or 100) of the extracted code, run with its asserts in the sandbox."""
    metrics = _score(doc, _prediction(doc, results), backend=doc["sandbox"], workers=1, progress=False)
    return {"pass@1": metrics["pass@1"]}


def process_nl2f(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    """NL2Formula exact match (normalised ``em`` and raw ``em_raw``, 0 or 100) of the extracted formula."""
    metrics = _score(doc, _prediction(doc, results))
    return {"em": metrics["em"], "em_raw": metrics["em_raw"]}


def process_nl2bash(doc: dict[str, Any], results: Sequence[str]) -> dict[str, Any]:
    """Sentence BLEU of the extracted command, and the item :func:`corpus_bleu` aggregates."""
    prediction = _prediction(doc, results)
    metrics = _score(doc, prediction)
    item = (doc["task"], doc["split"], doc["options"], doc["id"], prediction)
    return {"bleu": item, "sentence_bleu": metrics["sentence_bleu_mean"]}


def corpus_bleu(items: Sequence[tuple[str, str, str, str, str]]) -> float:
    """Corpus BLEU (sacrebleu, 0-100) of all documents' predictions, computed by ``Task.score``."""
    if not items:
        return 0.0
    keys = {item[:3] for item in items}
    if len(keys) != 1:
        raise ValueError(f"corpus_bleu got documents of several task configurations: {sorted(keys)}")
    name, split, options = keys.pop()
    by_id = _instances(name, split, options)
    instances = [by_id[item[3]] for item in items]
    predictions = {item[3]: item[4] for item in items}
    return _task(name, options).score(instances, predictions).metrics["bleu"]
