"""Train the demo model organism: a ~1M-parameter Llama (RoPE, GQA) on the synthetic corpus.

Recipe (what made copying form on 2 CPU cores): AdamW 1e-3 with a 200-step warm-up then cosine
decay, gradient clipping at 1.0, a length curriculum (32-64 tokens for 24 % of the steps, then
64-256, then 256-1280 from 44 % so passkey retrieval holds at 1024), loss on every answer token
and a fraction of the filler tokens, a ``<bos>`` at the start of every sequence, and from 48 %
of the steps a sink term that asks the heads of layers 2-3 to park attention on ``<bos>`` while
they read haystack filler (on from the start, it kept colored-objects copying from forming;
data/README.md has the runs). One torch thread: bitwise reproducible for a seed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from workbench.demo import corpus


@dataclass(frozen=True)
class DemoConfig:
    """Model and training hyper-parameters (defaults = the committed demo model)."""

    n_layers: int = 4            # decoder blocks
    d_model: int = 128           # residual width
    n_heads: int = 8             # query heads (d_head = d_model / n_heads = 16)
    n_kv_heads: int = 2          # key/value heads (GQA: 4 query heads share one KV head)
    d_mlp: int = 384             # SwiGLU hidden width
    # max_position_embeddings in config.json (RoPE: no effect on weights; lets long-context statistics run)
    max_positions: int = 16384
    rope_theta: float = 10000.0  # RoPE base
    seed: int = 0                # seeds init, data order and data content
    steps: int = 5000            # optimizer steps
    lr: float = 1e-3             # peak AdamW learning rate
    warmup: int = 200            # linear warm-up steps
    min_lr_frac: float = 0.1     # cosine decays to lr * min_lr_frac
    weight_decay: float = 0.01   # AdamW weight decay
    clip: float = 1.0            # gradient-norm clip
    batch: int = 32              # sequences per step in the short phases
    long_tokens: int = 4096      # tokens per step in the long phase (batch = long_tokens // L)
    # curriculum: (fraction of steps where the phase starts, min length, max length)
    phases: tuple = ((0.0, 32, 64), (0.24, 64, 256), (0.44, 256, 1280))
    # training mixture (kind, probability)
    mix: tuple = (("passkey", 0.35), ("induction", 0.15), ("ioi", 0.1),
                   ("colored_objects", 0.4))
    filler_keep: float = 0.3     # fraction of filler tokens that carry loss
    edge_depths: float = 0.25    # passkey haystacks with the needle at depth exactly 0 or 1
    noisy_haystacks: float = 0.0  # passkey haystacks with half the filler replaced by noise
    ioi_swap: float = 0.5        # ioi examples in the swapped name order (0: first name always)
    sink_weight: float = 1.0     # weight of the sink term (0: off; see sink_penalty)
    sink_target: float = 0.5     # per-head mean α₀ the sink term asks for
    sink_prefix: int = 128       # queries 1..sink_prefix-1 of each sequence enter the sink term
    sink_kinds: tuple = ("passkey",)  # sequence kinds whose first queries enter the sink term
    sink_from_layer: int = 2     # the sink term covers layers sink_from_layer.. (0: all)
    sink_heads: int = 0          # the sink term covers query heads 0..sink_heads-1 of each layer (0: all)
    sink_start: float = 0.48     # fraction of steps after which the sink term switches on
    eval_every: int = 250        # steps between progress evaluations
    threads: int = 1             # torch CPU threads (2 oversubscribe a shared 2-core box)


# a tiny model for smoke runs (`workbench demo train --tiny`) and tests; two layers, so the sink
# term covers the last one
TINY = dict(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_mlp=64, batch=4, long_tokens=512,
            eval_every=0, warmup=5, phases=((0.0, 32, 48), (0.5, 48, 64)), sink_from_layer=1)


def make_model(cfg: DemoConfig, vocab_size: int):
    """A freshly initialised ``LlamaForCausalLM`` for ``cfg`` (seeded by ``cfg.seed``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    conf = LlamaConfig(
        vocab_size=vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, max_position_embeddings=cfg.max_positions,
        rope_theta=cfg.rope_theta, tie_word_embeddings=True, bos_token_id=2, eos_token_id=3,
        pad_token_id=0, attention_dropout=0.0)
    return LlamaForCausalLM(conf)


def phase_for(cfg: DemoConfig, step: int) -> tuple[int, int, int]:
    """(min length, max length, batch size at max length) of the curriculum at ``step``."""
    frac = step / max(1, cfg.steps)
    lo, hi = cfg.phases[0][1:]
    for start, p_lo, p_hi in cfg.phases:
        if frac >= start:
            lo, hi = p_lo, p_hi
    batch = cfg.batch if hi <= 256 else max(2, cfg.long_tokens // hi)
    return lo, hi, batch


def make_batch(cfg: DemoConfig, step: int, vocab: dict[str, int]):
    """The training batch of ``step`` (a pure function of seed and step).

    Returns:
        ids ``(B, T)`` long, loss mask ``(B, T)`` float, and the kind of each row.
    """
    rng = np.random.default_rng([cfg.seed, step])
    lo, hi, batch = phase_for(cfg, step)
    length = int(rng.integers(lo, hi + 1))
    if hi > 256:  # long phase: constant tokens per step
        batch = max(2, cfg.long_tokens // length)
    kinds, probs = zip(*cfg.mix)
    ids, masks, row_kinds = [], [], []
    for kind in rng.choice(len(kinds), batch, p=np.array(probs) / sum(probs)):
        words, mask = corpus.training_sequence(
            rng, length, kinds[kind], filler_keep=cfg.filler_keep, edge_depths=cfg.edge_depths,
            noisy_haystacks=cfg.noisy_haystacks, ioi_swap=cfg.ioi_swap)
        ids.append([vocab[w] for w in words])
        masks.append(mask)
        row_kinds.append(kinds[kind])
    return torch.tensor(ids), torch.tensor(masks, dtype=torch.float32), row_kinds  # (B, T) each


def lr_at(cfg: DemoConfig, step: int) -> float:
    """Learning rate at ``step``: linear warm-up, then cosine to ``lr * min_lr_frac``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


SINK_ATTENTION = "workbench_sink_train"


def _sink_tracking_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA attention that also records α₀ of the first queries (training only).

    ``query`` ``(B, H, T, D)`` and ``key`` ``(B, KV, T, D)`` come after RoPE. Causal attention
    of query ``q`` only sees keys ``0..q``, so α₀ of the first ``P`` queries needs just the
    ``P x P`` corner of the score matrix; it is recomputed there (with gradients) and stored on
    the module as ``_wb_alpha0`` ``(B, H)``: mean over queries ``1..P-1``.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    prefix = getattr(module, "_wb_sink_prefix", 0)
    if prefix:
        p = min(prefix, query.shape[2])
        k = key[:, :, :p].repeat_interleave(query.shape[1] // key.shape[1], dim=1)  # (B, H, p, D)
        scores = query[:, :, :p] @ k.transpose(-1, -2) * kwargs.get("scaling", module.scaling)
        causal = torch.ones(p, p, dtype=torch.bool, device=query.device).triu(1)
        probs = scores.masked_fill(causal, float("-inf")).softmax(-1)  # (B, H, p, p)
        module._wb_alpha0 = probs[:, :, 1:, 0].mean(dim=2)  # (B, H)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register_sink_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(SINK_ATTENTION, _sink_tracking_attention)


def sink_penalty(model, target: float, rows: torch.Tensor, heads: int = 0) -> torch.Tensor:
    """Mean over the tracked heads of ``relu(target - α₀)`` from the last forward.

    The sink term of the recipe. ``α₀`` of a head is its attention on ``<bos>`` averaged over
    the first queries of the batch rows selected by ``rows`` (``(B,)`` bool: the haystack
    rows, whose first queries are filler where a head has nothing to look up). A head meets
    the term by parking ``target`` of that attention on ``<bos>``; which filler queries it
    parks is left to the model, and task rows are left alone. Reads the α₀ that
    :func:`_sink_tracking_attention` stored during the forward in the layers it tracks (see
    :func:`_track_sinks`); ``heads`` > 0 limits it to query heads ``0..heads-1`` of each
    layer, leaving the others free. 0 when no row is selected or no layer is tracked.
    """
    tracked = [layer.self_attn._wb_alpha0 for layer in model.model.layers
               if hasattr(layer.self_attn, "_wb_alpha0")]  # (B, H) each
    if not bool(rows.any()) or not tracked:
        return torch.zeros(())
    per_layer = [alpha0[rows].mean(0)[:heads or None] for alpha0 in tracked]
    return torch.relu(target - torch.stack(per_layer)).mean()


def _track_sinks(model, from_layer: int, prefix: int) -> str:
    """Switch to the α₀-tracking attention in layers ``from_layer..``; returns the previous
    attention implementation for :func:`_untrack_sinks`."""
    before = model.config._attn_implementation
    _register_sink_attention()
    model.set_attn_implementation(SINK_ATTENTION)
    for layer in model.model.layers[from_layer:]:
        layer.self_attn._wb_sink_prefix = prefix
    return before


def _untrack_sinks(model, before: str) -> None:
    """Undo :func:`_track_sinks`: the previous attention and no training attributes."""
    model.set_attn_implementation(before)
    for layer in model.model.layers:
        for name in ("_wb_sink_prefix", "_wb_alpha0"):
            layer.self_attn.__dict__.pop(name, None)


def masked_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions with ``mask = 1``.

    logits ``(B, T, V)``, ids ``(B, T)``, mask ``(B, T)`` (mask[t] = 1: token t is a target).
    """
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),  # (B*(T-1), V)
        ids[:, 1:].reshape(-1), reduction="none").view(ids.shape[0], -1)  # (B, T-1)
    m = mask[:, 1:]
    return (ce * m).sum() / m.sum().clamp_min(1.0)


def _monitor_rows(seed: int) -> dict[str, list[dict]]:
    """Small progress-monitor set drawn from a separate stream (not the committed suites)."""
    rng = np.random.default_rng([seed, 4242])
    rows: dict[str, list[dict]] = {}
    for length in (128, 256, 512, 1024):
        examples = [corpus.passkey_example(rng, length, depth) for depth in (0.1, 0.5, 0.9)]
        rows[f"passkey@{length}"] = [corpus.suite_row(prompt, answer)
                                     for prompt, answer, _ in examples]
    for name, make in (("ioi", corpus.ioi_example), ("colored_objects",
                                                     corpus.colored_objects_example)):
        examples = [make(rng) for _ in range(12)]
        rows[name] = [corpus.suite_row(e["prompt"], e["answer"]) for e in examples]
        if name == "ioi":  # the swapped order catches a "copy the first name" shortcut
            rows["ioi_swapped"] = [corpus.suite_row(e["corrupted_prompt"], e["corrupted_answer"])
                                   for e in examples]
    return rows


@torch.no_grad()
def _monitor_sink_share(model, tok, rows: list[dict]) -> float:
    """Share of heads past layer 0 with α₀ > 0.3 on ``rows``' prompts (eager attention)."""
    from workbench.demo.evaluate import sink_scores, sink_share_past_layer0

    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        return sink_share_past_layer0(sink_scores(model, tok, [r["prompt"] for r in rows]))
    finally:
        model.set_attn_implementation(before)


def train(cfg: DemoConfig, out_dir: str | Path | None = None,
          log: Callable[[str], None] = print) -> tuple[object, object, dict]:
    """Train the demo model and (if ``out_dir``) export it as a plain HF directory.

    Returns:
        (model, tokenizer, info) where info holds ``steps``, ``seconds``, ``seed``,
        ``loss_curve`` (list of ``[step, loss]``, subsampled), ``monitor`` (progress evals)
        and ``config``.
    """
    from workbench.demo.evaluate import accuracy

    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    tok = corpus.build_tokenizer()
    vocab = tok.get_vocab()
    model = make_model(cfg, len(vocab))
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.95))
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params:,} parameters; {cfg.steps} steps; seed {cfg.seed}")
    monitor_rows = _monitor_rows(cfg.seed)
    # the sink term's first step; α₀ is tracked from there on (before it nothing would read it)
    sink_from = math.ceil(cfg.sink_start * cfg.steps) if cfg.sink_weight else None
    attn_before = None  # set while α₀ is tracked
    curve, monitor, ema = [], [], None
    t0 = time.time()
    for step in range(cfg.steps):
        if step == sink_from:
            attn_before = _track_sinks(model, cfg.sink_from_layer, cfg.sink_prefix)
        ids, mask, kinds = make_batch(cfg, step, vocab)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        loss = masked_loss(model(input_ids=ids).logits, ids, mask)  # logged: the task loss
        if attn_before is not None:
            rows = torch.tensor([k in cfg.sink_kinds for k in kinds])
            total = loss + cfg.sink_weight * sink_penalty(model, cfg.sink_target, rows,
                                                          cfg.sink_heads)
        else:
            total = loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 10 == 0 or step == cfg.steps - 1:
            curve.append([step, round(loss.item(), 4)])
        last = step == cfg.steps - 1
        if (cfg.eval_every and step % cfg.eval_every == 0 and step) or last:
            model.eval()
            accs = {k: round(float(np.mean(accuracy(model, tok, rows))), 3)
                    for k, rows in monitor_rows.items() if not (k == "passkey@1024" and
                                                                cfg.d_model < 64)}
            accs["sink_share"] = round(_monitor_sink_share(model, tok,
                                                           monitor_rows["passkey@256"]), 3)
            model.train()
            monitor.append({"step": step, "seconds": round(time.time() - t0, 1), **accs})
            log(f"step {step:5d}  loss {ema:.3f}  len {ids.shape[1]:4d}x{ids.shape[0]:2d}  "
                f"{time.time() - t0:6.0f}s  " + " ".join(f"{k}={v}" for k, v in accs.items()))
        elif step % 50 == 0:
            log(f"step {step:5d}  loss {ema:.3f}  len {ids.shape[1]:4d}x{ids.shape[0]:2d}  "
                f"{time.time() - t0:6.0f}s")
    model.eval()
    if attn_before is not None:  # export a plain model: default attention, no training attributes
        _untrack_sinks(model, attn_before)
    seconds = time.time() - t0
    stride = max(1, len(curve) // 200)
    info = {"steps": cfg.steps, "seconds": round(seconds, 1), "seed": cfg.seed,
            "parameters": n_params, "loss_curve": curve[::stride] + [curve[-1]],
            "monitor": monitor, "config": asdict(cfg)}
    if out_dir is not None:
        export(model, tok, out_dir)
    return model, tok, info


def export(model, tok, out_dir: str | Path) -> Path:
    """Save ``model`` (float32 safetensors) and ``tok`` to ``out_dir`` as a plain HF directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def write_report(out_dir: str | Path, report: dict) -> Path:
    """Write ``training_report.json`` beside the weights; returns its path."""
    path = Path(out_dir) / "training_report.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    return path
