"""The method registry: how an experiment plans its stages, trains and serves, one object per method.

A :class:`Method` declares its stage schedules (template rate τ and example count k per stage), its template
compressor, whether it trains, how it serves (query only, a compressed template, the full prompt, gist tokens,
a shared prefix cache) and what enters its run key. :class:`promptintern.harness.experiment.Experiment` asks the method of
its name and has no method-name branches, so a new method is one module with a :func:`register_method` call::

    from promptintern.methods.registry import Fixed, register_method

    register_method(Fixed("ft-half-template", tau=0.5, shot_fraction=0.0, description="..."))

Built-in registrations (in :data:`METHODS` order): ``promptintern``; the untrained rows ``zero-shot``,
``zero-shot-full`` and ``prefix-cached``; the direct fine-tuning rows ``ft-full``, ``ft-compressed``,
``ft-template``, ``ft-none``; the compression baselines of :mod:`promptintern.baselines`; and ``gist``.
Algorithm versions live in :data:`promptintern.keys.METHOD_VERSIONS`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptintern.baselines import (
    COMPRESSION_BASELINES,
    DIRECT_FT,
    ZERO_SHOT,
    BaselineUnavailable,
    CompressionBaseline,
)
from promptintern.methods.schedule import Schedule
from promptintern.prompting.tokens import OPENAI_PREFIX

if TYPE_CHECKING:
    from promptintern.harness.experiment import Experiment
    from promptintern.prompting.prompt import Prompt


def shared_prefix(tok, all_prompts) -> int:
    """Tokens the whole test subset's prompts share (the template, for a full prompt): llama.cpp computes them
    once per context and every prompt from there, whether a run generates its subset at once or resumes."""
    from promptintern.serving.prefix_cache import common_prefix_length

    return common_prefix_length([tok(p.render(tok), add_special_tokens=False)["input_ids"] for p in all_prompts])


class Method:
    """Base class: a trained method served with the prompt of its last stage, LoRA merged for decoding."""

    name: str = ""
    description: str = ""
    #: Whether the method fine-tunes an adapter (untrained rows: False).
    trains: bool = True
    #: Whether a trained adapter may be folded into the base weights for decoding.
    mergeable: bool = True
    #: Whether the template is compressed per instance with its query as the question (LongLLMLingua).
    question_aware: bool = False
    #: Whether the method is served with a shared prompt prefix's key/values reused across requests.
    prefix_cached: bool = False
    #: Generation backends that can serve the method (``generation.backend`` in a profile). Methods with their
    #: own decoding loop (gist tokens, a shared prefix cache) are served by HF only.
    backends: tuple[str, ...] = ("hf", "llamacpp", "openai", "vllm")

    def schedules(self, exp: Experiment) -> tuple[Schedule, Schedule]:
        raise NotImplementedError

    def compressor(self, exp: Experiment):
        """The ``TemplateCompressor`` for stages with 0 < τ < 1 (raise :class:`BaselineUnavailable` if it
        cannot run here); the profile's PromptIntern compressors by default."""
        from promptintern.compress import TemplateCompressor, get_compressor

        m = exp.profile.method
        inst = get_compressor(m.instruction_compressor.name, **m.instruction_compressor.options)
        doc = m.document_compressor
        return TemplateCompressor(inst, get_compressor(doc.name, **doc.options) if doc else None)

    def needs_compressor(self, exp: Experiment) -> bool:
        """Whether :meth:`compressor` must be available for the experiment to run."""
        return any(0.0 < t < 1.0 for t in self.schedules(exp)[0].values())

    def key_settings(self, exp: Experiment) -> dict[str, Any]:
        """Method settings for the run key beyond the schedules (e.g. a baseline's compressor options)."""
        return {}

    def extra_prompt_tokens(self, exp: Experiment) -> int:
        """Tokens the method inserts into the rendered prompt (gist tokens), for context fitting."""
        return 0

    def train(self, exp: Experiment, datasets, config, progress: bool) -> Path:
        if exp.model.startswith(OPENAI_PREFIX):  # fine-tuned through the API: one job per stage
            from promptintern.training.openai_ft import train_through_api

            return train_through_api(exp, datasets, Path(config.output_dir))
        from promptintern.training.trainer import train_progressive

        return train_progressive(datasets, config, progress=progress)

    def load(self, exp: Experiment, adapter: Path | None):
        """The model and tokenizer that serve the test prompts (for llamacpp: the llama.cpp generator over the
        model's GGUF and the adapter exported as a GGUF LoRA, with the HF tokenizer that renders prompts)."""
        if exp.model.startswith(OPENAI_PREFIX):  # an API model: chat completions, cl100k counts
            from promptintern.training.openai_ft import ApiTokenizer, served_through_api

            return served_through_api(exp, adapter), ApiTokenizer()
        if exp.backend in ("llamacpp", "openai", "vllm"):
            from promptintern.serving.models import load_tokenizer

            return _served(exp, adapter), load_tokenizer(exp.model)
        if adapter is not None:
            from promptintern.training.trainer import load_for_inference

            return load_for_inference(exp.model, adapter, merge=exp.merges_adapter)
        from promptintern.serving.models import load_model, load_tokenizer

        return load_model(exp.model), load_tokenizer(exp.model)

    def generate(self, exp: Experiment, model, tok, prompts, all_prompts, max_new_tokens: int, stop=()) -> Iterator:
        """Generations for ``prompts`` (those still to predict; ``all_prompts``: the whole test subset), each
        cut at the first of the task's ``stop`` strings."""
        from promptintern.serving.generate import generate

        rendered = [p.render(tok) for p in prompts]
        if exp.backend in ("llamacpp", "vllm"):  # the same token ids as HF would see
            ids = [tok(text, add_special_tokens=False)["input_ids"] for text in rendered]
            if exp.backend == "vllm":  # one engine call; vLLM caches shared prefixes itself
                return model.generate(ids, max_new_tokens=max_new_tokens, stop=stop)
            return model.generate(ids, max_new_tokens=max_new_tokens, stop=stop, reuse_prefix=exp.reuses_prefix,
                                  shared_prefix=shared_prefix(tok, all_prompts) if exp.reuses_prefix else None)
        if exp.backend == "openai":
            from promptintern.serving.openai_backend import ServedPrompt

            served = [
                ServedPrompt(text, p.to_messages(), len(tok(text, add_special_tokens=False)["input_ids"]))
                for p, text in zip(prompts, rendered, strict=True)
            ]
            return model.generate(served, max_new_tokens=max_new_tokens, stop=stop)
        batch = exp.profile.generation_for(exp.task_name).batch_size
        return generate(model, tok, rendered, max_new_tokens=max_new_tokens, batch_size=batch, stop=stop)

    def billed_prompt_tokens(self, exp: Experiment, prompt: Prompt, counter) -> int:
        """The request's input tokens as an API would bill them (``counter``: cl100k chat accounting)."""
        return counter.count_prompt(prompt)


def _served(exp: Experiment, adapter: Path | None):
    """The llamacpp generator, or the ``openai`` backend's client (with a local llama-cpp-python server on
    127.0.0.1 when the profile names no endpoint; the client's ``close`` stops it)."""
    import os

    from promptintern.serving.llamacpp import LlamaCppGenerator, adapter_gguf, gguf_for
    from promptintern.serving.openai_backend import OpenAIGenerator
    from promptintern.serving.server import LocalOpenAIServer

    generation = exp.profile.generation_for(exp.task_name)
    spec = generation.openai
    if exp.backend == "vllm":
        from promptintern.serving.models import resolve
        from promptintern.serving.vllm_backend import VLLMGenerator

        return VLLMGenerator(resolve(exp.model), adapter, max_model_len=exp.context_length,
                             prefix_caching=exp.spec.prefix_cached, seed=exp.profile.seed,
                             lora_name=f"{exp.task_name}-{exp.method}",
                             tensor_parallel_size=generation.vllm_tensor_parallel_size)  # fmt: skip
    if exp.backend == "openai" and spec.base_url is not None:
        model = spec.model or exp.model
        return OpenAIGenerator(spec.base_url, model, os.environ.get(spec.api_key_env), mode=spec.mode,
                               server=spec.server)  # fmt: skip
    lora = adapter_gguf(adapter, exp.model) if adapter is not None else None
    if exp.backend == "llamacpp":
        workers = generation.llamacpp_workers or os.cpu_count() or 1
        return LlamaCppGenerator(gguf_for(exp.model), lora, n_ctx=exp.context_length, workers=workers)
    server = LocalOpenAIServer(
        gguf_for(exp.model), lora=lora, n_ctx=exp.context_length, prefix_reuse=False
    ).start()
    client = OpenAIGenerator(server.base_url, server.model_id, mode=spec.mode, server="llamacpp")
    client.close = server.stop
    return client


class PromptIntern(Method):
    """Progressive fine-tuning with the profile's template schedule S_tmp and example schedule S_egs."""

    def __init__(self, name: str = "promptintern", description: str = "PromptIntern (Algorithm 1)"):
        self.name, self.description = name, description

    def schedules(self, exp: Experiment) -> tuple[Schedule, Schedule]:
        m = exp.profile.method
        ts = m.template_schedule
        tmpl = Schedule(ts.pattern, ts.start, ts.end, m.stages, ts.rate)
        es = m.example_schedule
        if es is None:
            return tmpl, Schedule(m.example_pattern, float(exp.shots), 0.0, m.stages, ts.rate)
        k0, k1 = float(round(exp.shots * es.start)), float(round(exp.shots * es.end))
        return tmpl, Schedule(es.pattern, k0, k1, m.stages, es.rate)


class Fixed(Method):
    """One prompt format throughout (template rate ``tau``, ``shot_fraction`` of the task's k), trained with
    a constant schedule over the profile's stages (``trains``) or served untrained."""

    def __init__(self, name: str, tau: float, shot_fraction: float, *, trains: bool = True, description: str = ""):
        self.name, self.tau, self.shot_fraction = name, tau, shot_fraction
        self.trains, self.description = trains, description

    def schedules(self, exp: Experiment) -> tuple[Schedule, Schedule]:
        k = float(int(exp.shots * self.shot_fraction))
        stages = exp.profile.method.stages if self.trains else 1
        return Schedule("constant", self.tau, self.tau, stages), Schedule("constant", k, k, stages)


class PrefixCached(Fixed):
    """The untrained full prompt served with the key/values of the prefix shared by all test prompts
    computed once and reused (:mod:`promptintern.serving.prefix_cache`; on llama.cpp, its own match of the
    prompt's prefix with the tokens evaluated before)."""

    backends = ("hf", "llamacpp", "vllm")
    #: Table 8 serves it by a server that reuses the shared prefix's key/values across requests.
    prefix_cached = True

    def generate(self, exp: Experiment, model, tok, prompts, all_prompts, max_new_tokens: int, stop=()) -> Iterator:
        from promptintern.serving.prefix_cache import PrefixCachedGenerator

        if exp.backend in ("llamacpp", "vllm"):  # their own prefix caches (vLLM: prefix caching on for this row)
            ids = [tok(p.render(tok), add_special_tokens=False)["input_ids"] for p in prompts]
            if exp.backend == "vllm":
                return model.generate(ids, max_new_tokens=max_new_tokens, stop=stop)
            return model.generate(ids, max_new_tokens=max_new_tokens, stop=stop, reuse_prefix=True,
                                  shared_prefix=shared_prefix(tok, all_prompts))

        cached = PrefixCachedGenerator(model, tok)
        cached.prepare([p.render(tok) for p in all_prompts])  # the whole subset's prefix, so a resume reuses it
        return cached.generate([p.render(tok) for p in prompts], max_new_tokens=max_new_tokens, stop=stop)


class Compression(Method):
    """A compression baseline: the whole template compressed once to the profile's ``baselines.rate``,
    ``baselines.shots`` examples, trained (constant schedule) and served with that prompt."""

    def __init__(self, name: str, baseline: CompressionBaseline):
        self.name, self.baseline = name, baseline
        self.question_aware, self.description = baseline.question_aware, baseline.description

    def schedules(self, exp: Experiment) -> tuple[Schedule, Schedule]:
        tau, k = exp.profile.baselines.rate, float(exp.profile.baselines.shots)
        stages = exp.profile.method.stages
        return Schedule("constant", tau, tau, stages), Schedule("constant", k, k, stages)

    def options(self, exp: Experiment) -> dict[str, Any]:
        """The compressor options from the profile, ``"$model"`` replaced by the experiment's model."""
        options = exp.profile.baselines.compressors.get(self.name, {})
        return {k: (exp.model if v == "$model" else v) for k, v in options.items()}

    def compressor(self, exp: Experiment):
        from promptintern.compress import LLMLingua2CheckpointError, TemplateCompressor, get_compressor

        try:
            backend = get_compressor(self.baseline.compressor, **self.options(exp))
        except LLMLingua2CheckpointError as exc:
            raise BaselineUnavailable(f"{self.name}: {exc}") from None
        why = backend.unavailable() if hasattr(backend, "unavailable") else None
        if why:  # e.g. an API model with no key and no endpoint: say so before anything runs
            raise BaselineUnavailable(f"{self.name}: {why}")
        return TemplateCompressor(backend, whole=True)

    def needs_compressor(self, exp: Experiment) -> bool:
        return True  # report an unavailable compressor before anything runs

    def key_settings(self, exp: Experiment) -> dict[str, Any]:
        return {"baseline": {"compressor": self.baseline.compressor, "options": self.options(exp)}}


class Gist(Method):
    """Gist tokens (Mu et al. 2023, :mod:`promptintern.baselines.gist`): template + examples compressed into
    ``num_gist`` trained tokens; served from the cached gist key/values on HF by its own loader, which folds
    the LoRA weights in as the other methods do (``generation.merge_adapter``)."""

    backends = ("hf",)

    def __init__(self, name: str = "gist", description: str = "gist tokens (Mu et al. 2023)"):
        self.name, self.description = name, description

    def schedules(self, exp: Experiment) -> tuple[Schedule, Schedule]:
        gist = exp.profile.baselines.gist
        k = float(exp.shots if gist.shots is None else gist.shots)
        stages = exp.profile.method.stages
        return Schedule("constant", 1.0, 1.0, stages), Schedule("constant", k, k, stages)

    def key_settings(self, exp: Experiment) -> dict[str, Any]:
        return {"gist": exp.profile.baselines.gist.model_dump()}

    def extra_prompt_tokens(self, exp: Experiment) -> int:
        return exp.profile.baselines.gist.num_gist

    def train(self, exp: Experiment, datasets, config, progress: bool) -> Path:
        from promptintern.baselines.gist import train_gist

        return train_gist(datasets, config, exp.profile.baselines.gist.num_gist, progress=progress)

    def load(self, exp: Experiment, adapter: Path | None):
        from promptintern.baselines.gist import load_gist_model

        return load_gist_model(exp.model, adapter, merge=exp.merges_adapter)

    def generate(self, exp: Experiment, model, tok, prompts, all_prompts, max_new_tokens: int, stop=()) -> Iterator:
        from promptintern.baselines.gist import generate_gist

        num_gist = exp.profile.baselines.gist.num_gist
        batch = exp.profile.generation_for(exp.task_name).batch_size
        return generate_gist(model, tok, prompts, num_gist=num_gist, max_new_tokens=max_new_tokens, stop=stop,
                             batch_size=batch)  # fmt: skip

    def billed_prompt_tokens(self, exp: Experiment, prompt: Prompt, counter) -> int:
        """Only the gist tokens and the query are sent; template and examples live in the gists."""
        from promptintern.prompting.prompt import Prompt

        return counter.count_prompt(Prompt(query=prompt.query)) + self.extra_prompt_tokens(exp)


_REGISTRY: dict[str, Method] = {}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` under ``method.name``; an existing name is refused unless ``replace``."""
    if not method.name:
        raise ValueError("a method needs a name")
    if method.name in _REGISTRY and not replace:
        raise ValueError(f"method {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


#: Installed packages add methods through this entry-point group: each entry point names a :class:`Method`
#: object (``[project.entry-points."promptintern.methods.registry"] my-method = "my_pkg.methods:MY_METHOD"``).
ENTRY_POINT_GROUP = "promptintern.methods.registry"
_PLUGINS: list[str] = []


def load_plugins() -> list[str]:
    """Register the methods of installed plug-ins (once); returns their names."""
    if _PLUGINS:
        return _PLUGINS
    from importlib.metadata import entry_points

    _PLUGINS.append("")  # loaded (a plug-in that fails raises once, with its name)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        method = ep.load()
        if not isinstance(method, Method):
            raise ValueError(f"entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP}) is not a Method object")
        if method.name not in _REGISTRY:
            register_method(method)
            _PLUGINS.append(method.name)
    return _PLUGINS[1:]


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(_REGISTRY)}") from None


def method_names() -> tuple[str, ...]:
    load_plugins()
    return tuple(_REGISTRY)


register_method(PromptIntern())
for _name, (_tau, _frac) in ZERO_SHOT.items():
    _cls = PrefixCached if _name == "prefix-cached" else Fixed
    register_method(_cls(_name, _tau, _frac, trains=False, description="untrained"))
for _name, (_tau, _frac) in DIRECT_FT.items():
    register_method(Fixed(_name, _tau, _frac, description="direct fine-tuning"))
__import__("promptintern.methods.distill")  # registers "distill"; a call: distill.py imports this module
for _name, _baseline in COMPRESSION_BASELINES.items():
    register_method(Compression(_name, _baseline))
register_method(Gist())

#: The built-in methods, in registration order (tables, CLI help).
METHODS = tuple(_REGISTRY)
