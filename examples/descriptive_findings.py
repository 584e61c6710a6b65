"""What the shared descriptive capture finds on a model, checked against independent computations.

Prints, for the benchmark's prompts (`workbench.benchmarks.describe.bench_prompts`: 20 prompts
of 16 to 128 tokens by default):

- per-head first-token sink scores α₀ against an independent eager computation (a second copy of
  the model loaded from disk, ``output_attentions=True``, one prompt at a time), and the same for
  every token's α and the head summary's entropy;
- Sink^0.3 by layer (Gu et al. 2024);
- massive activations (Sun et al. 2024): which layers, dims and positions;
- the top previous-token and induction heads of `wb.head_patterns`, with their Spearman rank
  correlation to TransformerLens's own rule, ``transformer_lens.head_detector.detect_head`` run
  on the bridge over other seeded repeated sequences of single-token words.

    python examples/descriptive_findings.py --model smollm2
    python examples/descriptive_findings.py --model /path/to/hf_dir
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch


def _oracle(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


def _word_sequences(model, n: int, length: int, seed: int) -> list[str]:
    """``n`` strings of ``length`` random single-token words, each repeated twice."""
    tok = model.tokenizer
    words = []
    for i in tok.get_vocab().values():
        text = tok.decode([i])
        if text.startswith(" ") and text[1:].isalpha() and len(text) > 3 and tok(text)["input_ids"] == [i]:
            words.append(text)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        seq = "".join(rng.sample(sorted(words), length))
        out.append((seq + seq).strip())
    return out


def main(argv=None) -> None:
    import pandas as pd
    from scipy.stats import spearmanr
    from transformer_lens.head_detector import detect_head

    import workbench as wb
    from workbench.benchmarks.describe import bench_prompts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--oracle-dir", default=None, help="HF directory of the same weights (default: the model's)")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--max-len", type=int, default=128)
    args = ap.parse_args(argv)

    model = wb.load_model(args.model)
    prompts = bench_prompts(model, args.prompts, args.max_len)
    start = time.perf_counter()
    desc = wb.describe(model, prompts)
    print(f"{model!r}\n{len(prompts)} prompts, {int(desc.lengths.sum())} tokens; describe: {desc.mode}, "
          f"{time.perf_counter() - start:.1f} s")
    sinks = wb.sink_scores(model, prompts, capture=desc)
    print("first token:", sinks.attrs["first_token_note"])

    # -- against an independent eager copy -------------------------------------------------------
    oracle = _oracle(args.oracle_dir or model.meta["path"])
    alpha0 = np.zeros((model.n_layers, model.n_heads))
    entropy_sum, rows = np.zeros((model.n_layers, model.n_heads)), 0
    tokens = wb.token_sinks(model, prompts, capture=desc)
    worst_alpha = 0.0
    for pid, ids in enumerate(prompts):
        with torch.no_grad():
            att = oracle(input_ids=torch.tensor([ids]), output_attentions=True).attentions
        a = torch.stack([x[0].double() for x in att])  # (layer, head, query, key)
        n = a.shape[-1]
        alpha0 += a[..., 0].mean(-1).numpy() / len(prompts)
        entropy_sum += (-torch.special.xlogy(a, a).sum(-1)).sum(-1).numpy()
        rows += n
        alpha = (a.sum(-2) / torch.arange(n, 0, -1)).numpy()  # (layer, head, key): Gu et al.'s α
        ours = tokens[tokens.prompt_id == pid].alpha.to_numpy().reshape(model.n_layers, model.n_heads, n)
        worst_alpha = max(worst_alpha, float(np.abs(ours - alpha).max()))
    grid = sinks.pivot(index="layer", columns="head", values="sink_score").to_numpy()
    summary = wb.head_summary(model, prompts, capture=desc)
    ent = summary.pivot(index="layer", columns="head", values="entropy").to_numpy()
    print(f"sink_score vs eager alpha0: max abs diff {np.abs(grid - alpha0).max():.2e} over {grid.size} heads")
    print(f"token_sinks alpha vs eager: max abs diff {worst_alpha:.2e}")
    print(f"head_summary entropy vs eager: max abs diff {np.abs(ent - entropy_sum / rows).max():.2e}")

    # -- Sink^0.3 by layer -------------------------------------------------------------------
    by_layer = sinks.groupby("layer").is_sink.mean()
    print(f"Sink^0.3 = {100 * wb.sink_share(sinks):.1f}% of heads; by layer (%):")
    print(" ".join(f"L{layer}:{100 * v:.0f}" for layer, v in by_layer.items()))
    top = sinks.sort_values("sink_score", ascending=False).head(5)
    print("strongest sink heads:", ", ".join(f"L{r.layer}H{r.head} {r.sink_score:.3f}" for r in top.itertuples()))

    # -- massive activations -------------------------------------------------------------------
    massive = wb.massive_activations(model, prompts, capture=desc)
    at_first = int((massive.position == 0).sum())
    print(f"massive activations: {len(massive)} entries, {at_first} at position 0, "
          f"{len(massive) - at_first} elsewhere (positions {sorted(set(massive.position))[:10]})")
    if len(massive):
        for dim, group in massive.groupby("dim"):
            positions = group.groupby(["position", "token"]).size().sort_values(ascending=False)
            print(f"  dim {dim}: layers {group.layer.min()}-{group.layer.max()}, "
                  f"{group.prompt_id.nunique()} prompts, |value| up to {group.value.abs().max():.0f} "
                  f"(ratio up to {group.ratio.max():.0f}); positions {dict(list(positions.items())[:5])}")

    # -- previous-token and induction heads vs TransformerLens ----------------------------------------
    start = time.perf_counter()
    patterns = wb.head_patterns(model, prompts, capture=desc)
    print(f"head_patterns: {time.perf_counter() - start:.1f} s; {patterns.attrs['detector_probes']}")
    seqs = _word_sequences(model, 8, 24, seed=1)
    for ours, name in (("prev_token", "previous_token_head"), ("induction", "induction_head")):
        theirs = detect_head(model.bridge, seqs, name).double().numpy()  # (layer, head)
        mine = patterns.pivot(index="layer", columns="head", values=ours).to_numpy()
        rho = spearmanr(mine.ravel(), theirs.ravel()).statistic
        best = patterns.sort_values(ours, ascending=False).head(5)
        print(f"top {ours} heads: " + ", ".join(
            f"L{r.layer}H{r.head} {getattr(r, ours):.3f} (TL {theirs[r.layer, r.head]:.3f})" for r in best.itertuples()))
        print(f"  Spearman rho vs TransformerLens detect_head('{name}') over {mine.size} heads: {rho:.3f}")
    print(pd.Series(patterns.pattern).value_counts().to_dict())


if __name__ == "__main__":
    main()
