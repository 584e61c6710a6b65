"""Reading a Hugging Face directory so that loading refuses what it cannot trust (issue 19).

- pickle checkpoints (``pytorch_model.bin``, ``*.pt``, ``*.ckpt``, ``*.pth``) are never read:
  only safetensors, with advice on converting;
- transformers' load report is checked: missing, unexpected or mis-shaped weights are refused
  (they would otherwise be filled with random values and run silently), except what a source
  declares expected (MiniLM's untrained MLM head);
- every failure of config, weights or tokenizer ends in one `WorkbenchError`.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

import torch

from workbench.errors import WorkbenchError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


@contextmanager
def quiet_transformers():
    """Silence transformers' own load report and progress bars: `check_report` judges the report."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def read_config(path: Path):
    """``AutoConfig`` of a directory, or one clear error (bad JSON, unknown model type)."""
    from transformers import AutoConfig

    try:
        with quiet_transformers():
            return AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        text = str(exc)
        if "not a valid JSON" in text or "JSON" in type(exc).__name__:
            raise WorkbenchError(f"{path / 'config.json'} is not valid JSON: expected a Hugging Face config "
                                 "(re-save it with config.save_pretrained)") from None
        if "model type" in text or "Unrecognized model" in text:
            import transformers

            kind = _model_type(path)
            raise WorkbenchError(f"model type {kind!r} in {path / 'config.json'} is not known to transformers "
                                 f"{transformers.__version__}: expected a model_type it implements "
                                 "(e.g. 'llama', 'gpt2', 'bert')") from None
        raise WorkbenchError(f"cannot read {path / 'config.json'}: {_first_line(exc)}") from None


def check_weight_files(path: Path) -> list[Path]:
    """The directory's safetensors files; pickle-only or weightless directories are refused."""
    safe = sorted(path.glob("*.safetensors"))
    if safe:
        return safe
    pickles = sorted(p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    if pickles:
        first = pickles[0]
        raise WorkbenchError(
            f"{first} is a pickle checkpoint, which the workbench never loads (unpickling can run code): "
            "expected model.safetensors. If you trust the file, convert it once elsewhere with "
            f"`python -c \"from transformers import AutoModel; AutoModel.from_pretrained('{path}', "
            f"use_safetensors=False).save_pretrained('{path}-safetensors')\"` (use the model's own class, "
            "e.g. AutoModelForCausalLM) and load that directory"
        )
    raise WorkbenchError(f"model directory {str(path)!r} has no weights: expected model.safetensors "
                         "(or sharded *.safetensors with model.safetensors.index.json)")


def load_weights(model_class, path: Path, *, config, dtype: torch.dtype | None, placement: dict,
                 allow_missing: Iterable[str] = (), allow_unexpected: Iterable[str] = ()):
    """``from_pretrained`` with safetensors only and eager attention, its report checked.

    Weights that the checkpoint lacks (only those under ``allow_missing`` prefixes are allowed)
    are initialised under a fixed seed, so two loads give the same model and the caller's RNG
    is untouched.
    """
    kwargs: dict[str, Any] = dict(config=config, attn_implementation="eager", use_safetensors=True,
                                  output_loading_info=True, ignore_mismatched_sizes=True, **placement)
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        with quiet_transformers(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, info = model_class.from_pretrained(path, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, EOFError) as exc:
        raise WorkbenchError(f"cannot load the weights in {str(path)!r}: {_first_line(exc)} "
                             "(expected complete safetensors files matching config.json)") from None
    except Exception as exc:  # safetensors' SafetensorError derives from Exception only
        if type(exc).__name__ != "SafetensorError":
            raise
        raise WorkbenchError(f"the weights in {str(path)!r} are damaged ({exc}): expected complete "
                             "safetensors files (a truncated download? fetch or save them again)") from None
    check_report(info, path, allow_missing=allow_missing, allow_unexpected=allow_unexpected)
    return model


def check_report(info: dict, path: Path, *, allow_missing: Iterable[str] = (), allow_unexpected: Iterable[str] = ()):
    """Refuse missing, unexpected or mis-shaped weights (names up to 5 of each)."""
    allow_missing, allow_unexpected = tuple(allow_missing), tuple(allow_unexpected)
    problems = []
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(allow_missing))
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if not k.startswith(allow_unexpected))
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", ()))
    for label, keys, what in (("missing", missing, "would be random"), ("unexpected", unexpected, "unused"),
                              ("mis-shaped", mismatched, "do not match config.json")):
        if keys:
            shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
            problems.append(f"{len(keys)} {label} weight(s) ({what}): {shown}")
    errors = [e for e in info.get("error_msgs", ()) if e]
    if errors:
        problems.append(f"load errors: {_first_line(errors[0])}")
    if problems:
        raise WorkbenchError(f"refusing the checkpoint in {str(path)!r}, it does not match its config: "
                             + "; ".join(problems) + ". Expected every weight of the architecture, and nothing else")


def load_tokenizer(path: Path):
    """``AutoTokenizer`` of a directory, or one clear error."""
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WorkbenchError(f"model directory {str(path)!r} has no usable tokenizer ({_first_line(exc)}): "
                             "expected tokenizer.json / tokenizer_config.json (tokenizer.save_pretrained)") from None


def _model_type(path: Path) -> str:
    import json

    try:
        return str(json.loads((path / "config.json").read_text()).get("model_type"))
    except (OSError, ValueError, AttributeError):
        return "?"


def _first_line(exc: Any) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
