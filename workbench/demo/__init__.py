"""The demo model organism: synthetic corpus, training script and its measurements.

``workbench demo train`` regenerates ``data/demo/`` (a plain Hugging Face Llama directory) and
``data/suites/*.jsonl``; :mod:`workbench.demo.evaluate` measures accuracy, the first-token sink
and the retrieval heads with plain transformers.
"""
