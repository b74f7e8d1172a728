"""Serving stage: loading a model (the embedded GGUF, any HF model; :mod:`.models`), greedy generation with stop
strings and latency (:mod:`.generate`) and generation with a shared-prefix key/value cache (:mod:`.prefix_cache`)."""
