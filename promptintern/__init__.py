"""PromptIntern reproducibility suite.

Data flows one way: task data -> prompt parts -> schedule -> compressor/retriever -> stage datasets
-> trainer -> adapter -> generator -> evaluator -> results store -> tables.
"""

__version__ = "0.1.0"
