"""Model loading: every source becomes one `ModelHandle` around a TransformerLens bridge.

    >>> from workbench.models import load_model
    >>> model = load_model("demo")          # or "smollm2", "minilm", a directory, hf_model=...

Modules: `load` (sources, `load_model`), `handle` (`ModelHandle`), `checkpoint` (refusing what
cannot be trusted), `options` (device, dtype, placement), `twins` (the caller's model is never
changed), `smollm2` (the GGUF source and its cache).
"""

from workbench.models.handle import ModelHandle
from workbench.models.load import REPO_ROOT, SOURCES, data_dir, load_model

__all__ = ["ModelHandle", "REPO_ROOT", "SOURCES", "data_dir", "load_model"]
