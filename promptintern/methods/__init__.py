"""Method stage: the registered methods (:mod:`.registry`: PromptIntern, direct fine-tuning, untrained and
compression baselines, Gist; context distillation in :mod:`.distill`), their template-rate and example-count
schedules (:mod:`.schedule`) and the stage plans and datasets they build (:mod:`.stages`).
``from promptintern.methods import get_method`` is the registry."""

from promptintern.methods.registry import (
    ENTRY_POINT_GROUP,
    METHODS,
    Compression,
    Fixed,
    Gist,
    Method,
    PrefixCached,
    PromptIntern,
    get_method,
    load_plugins,
    method_names,
    register_method,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "METHODS",
    "Compression",
    "Fixed",
    "Gist",
    "Method",
    "PrefixCached",
    "PromptIntern",
    "get_method",
    "load_plugins",
    "method_names",
    "register_method",
]
