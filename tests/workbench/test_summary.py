"""head_summary against an independent computation from the model's own eager attentions."""

import numpy as np
import torch

import workbench as wb
from tests.tiny_models import PROMPTS


def test_head_summary_equals_eager_rows(tiny):
    model, oracle = tiny
    frame = wb.head_summary(model, PROMPTS, batch_size=2)
    entropies = {(l, h): [] for l in range(model.n_layers) for h in range(model.n_heads)}
    peaks = {key: [] for key in entropies}
    for prompt in PROMPTS:  # one prompt at a time: no padding anywhere
        ids, mask = model.to_tokens(prompt)
        with torch.no_grad():
            attentions = oracle(input_ids=ids, output_attentions=True).attentions
        for layer, a in enumerate(attentions):
            for head in range(model.n_heads):
                rows = a[0, head].double().numpy()
                logs = np.log(np.where(rows > 0, rows, 1.0))
                entropies[layer, head] += list(-(rows * logs).sum(-1))
                peaks[layer, head] += list(rows.max(-1))
    assert list(frame.columns[:4]) == ["layer", "head", "entropy", "max_prob"]
    assert len(frame) == model.n_layers * model.n_heads
    for row in frame.itertuples():
        assert abs(row.entropy - np.mean(entropies[row.layer, row.head])) < 1e-5
        assert abs(row.max_prob - np.mean(peaks[row.layer, row.head])) < 1e-5
    assert (frame.n_queries == sum(len(p.split()) + (2 if not model.is_causal else 1) for p in PROMPTS)).all()
