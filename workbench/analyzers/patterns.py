"""Head pattern descriptors, a UMAP map of the heads, and clusters of pattern types.

Descriptors per head:

- entropy, max_prob (Voita et al. 2019's confidence), sink_mass (attention on position 0, the
  first token, BOS or not), local_mass, mean_distance: from the shared descriptive capture of the
  prompts (`wb.describe`), means over query rows and then over prompts; mean_distance is the
  mean of |t − k| under the attention of query t (t − k in a causal model, where it comes from
  the column sums: Σ_t Σ_k A[t,k](t − k) = Σ_t t − Σ_k k·col_k).
- prev_token, duplicate, induction: TransformerLens ``head_detector``'s "mul" score
  Σ(A ⊙ D) / ΣA of the exact pattern A against a detection pattern D, averaged over seeded
  probes made of a random token sequence repeated twice. These need repeated sequences, which
  ordinary prompts lack, so they come from a separate small forward over the synthetic probes
  (not from the shared capture); the frame's attrs say so (``detector_probes``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch

from workbench.analyzers import Analyzer, register
from workbench import findings
from workbench.figures import head_grid, umap_scatter
from workbench.findings import summaries
from workbench.capture import patterns_for_batch
from workbench.checks import integer, positive_int
from workbench.description import ROW_FIELDS, Description, resolve
from workbench.errors import WorkbenchError
from workbench.frames import head_frame

STAT_FEATURES = ("entropy", "max_prob", "sink_mass", "local_mass", "mean_distance")
DETECTOR_FEATURES = ("prev_token", "duplicate", "induction")
FEATURES = STAT_FEATURES + DETECTOR_FEATURES
#: How a cluster is named: (name, descriptor, floor). A cluster takes the name of the descriptor
#: on which its mean stands out most from all heads (z-score > `NAME_Z`), among those whose
#: cluster mean also reaches the floor; "mixed" when none does.
PATTERN_TRAITS = (
    ("induction", "induction", 0.1),
    ("previous-token", "prev_token", 0.15),
    ("duplicate-token", "duplicate", 0.1),
    ("sink", "sink_mass", 0.3),
    ("local", "local_mass", 0.5),
    ("broad", "entropy", 0.0),
)
NAME_Z = 0.5


# -- detector scores on repeated random tokens -------------------------------------------------------------
def _special_frame(model) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after a text."""
    enc = model.tokenizer("a", return_special_tokens_mask=True)
    ids, special = enc["input_ids"], enc["special_tokens_mask"]
    body = [i for i, s in enumerate(special) if not s]
    if not body:
        return [], []
    return ids[:body[0]], ids[body[-1] + 1:]


def repeated_token_probes(model, *, n_probes: int = 8, probe_len: int = 24, seed: int = 0) -> torch.Tensor:
    """Seeded probes ``[n_probes, pos]``: the tokenizer's special prefix, a random token sequence
    of length ``probe_len`` twice, the special suffix (the TransformerLens induction probe).
    ``probe_len`` is cut to fit the model's context."""
    prefix, suffix = _special_frame(model)
    probe_len = min(probe_len, (model.n_ctx - len(prefix) - len(suffix)) // 2)
    if probe_len < 2:
        raise WorkbenchError(f"{model.name}'s context of {model.n_ctx} tokens is too short for repeated-token probes")
    vocab = min(model.hf_model.config.vocab_size, len(model.tokenizer))
    pool = torch.tensor(sorted(set(range(vocab)) - set(model.tokenizer.all_special_ids)))
    generator = torch.Generator().manual_seed(seed)
    body = pool[torch.randint(len(pool), (n_probes, probe_len), generator=generator)]  # (probe, probe_len)
    pre = torch.tensor(prefix, dtype=torch.long).expand(n_probes, -1)
    post = torch.tensor(suffix, dtype=torch.long).expand(n_probes, -1)
    return torch.cat([pre, body, body, post], dim=1)


def detection_patterns(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """TransformerLens ``head_detector``'s detection patterns D ``[pos, pos]`` for one sequence.

    prev_token: D[t, t−1] = 1. duplicate: D[t, k] = 1 for k < t with token k = token t.
    induction: D[t, k] = 1 for k ≤ t with token k−1 = token t (the token after an earlier copy).
    """
    n = tokens.shape[0]
    prev = torch.zeros(n, n)
    prev[1:, :-1] = torch.eye(n - 1)
    same = (tokens[:, None] == tokens[None, :]).float()  # (query, key)
    duplicate = torch.tril(same, diagonal=-1)
    induction = torch.zeros(n, n)
    induction[:, 1:] = duplicate[:, :-1]
    return {"prev_token": prev, "duplicate": duplicate, "induction": torch.tril(induction)}


def probe_scores(model, *, n_probes: int = 8, probe_len: int = 24, seed: int = 0) -> pd.DataFrame:
    """`detector_scores` on the seeded `repeated_token_probes`, once per model and settings in
    this process (`workbench.tasks.memo`): head_patterns and the causal check of its induction
    ranking read the same probe forward."""
    from workbench.tasks import memo

    def compute():
        probes = repeated_token_probes(model, n_probes=n_probes, probe_len=probe_len, seed=seed).to(model.device)
        patterns = patterns_for_batch(model, probes, torch.ones_like(probes), range(model.n_layers))
        return detector_scores(patterns, probes)

    return memo(model, ("probe_scores", n_probes, probe_len, seed), compute)


def detector_scores(patterns: dict[int, torch.Tensor], tokens: torch.Tensor) -> pd.DataFrame:
    """The "mul" score Σ(A ⊙ D) / ΣA per head, averaged over sequences.

    Args:
        patterns: ``{layer: [batch, head, query, key]}`` exact patterns of ``tokens``.
        tokens: ``[batch, pos]``.
    Returns:
        DataFrame ``layer, head, prev_token, duplicate, induction``.
    """
    detections = [detection_patterns(row) for row in tokens.cpu()]
    masks = {name: torch.stack([d[name] for d in detections]).double()  # (batch, query, key), built once
             for name in DETECTOR_FEATURES}
    grids = {name: [] for name in DETECTOR_FEATURES}  # name -> per layer [head]
    for layer in sorted(patterns):
        a = patterns[layer].double()  # (batch, head, query, key)
        total = a.sum((-1, -2))  # (batch, head)
        for name, d in masks.items():
            hits = (a * d.to(a.device)[:, None]).sum((-1, -2))  # (batch, head)
            grids[name].append((hits / total).mean(0))  # (head,), mean over sequences
    frame = head_frame({name: torch.stack(rows) for name, rows in grids.items()})  # (layer, head) grids
    frame["layer"] = np.asarray(sorted(patterns))[frame["layer"]]
    return frame


# -- map and clusters -------------------------------------------------------------------------------------
def _standardize(x: np.ndarray) -> np.ndarray:
    std = x.std(0)
    return (x - x.mean(0)) / np.where(std > 1e-12, std, 1.0)


def _enable_umap_cache() -> None:
    """Let numba cache umap-learn's compiled kernels on disk: the first fit in a process
    otherwise spends ~10 s compiling them, every time."""
    try:
        from umap import layouts, umap_

        for fn in (umap_.smooth_knn_dist, umap_.compute_membership_strengths,
                   layouts._nb_optimize_layout_euclidean_single_epoch):
            if getattr(fn, "_cache", None) is not None and type(fn._cache).__name__ == "NullCache":
                fn.enable_caching()
    except Exception:  # noqa: BLE001 - caching is an optimisation only
        pass


def umap_embedding(features: np.ndarray, *, n_neighbors: int | None = None, seed: int = 0) -> np.ndarray:
    """2-D UMAP (umap-learn) of standardized head descriptors ``[heads, features]``.

    n_neighbors defaults to min(15, heads − 1) (umap-learn's default capped by the number of
    heads). The k-nearest-neighbour graph is computed exactly here and handed to UMAP.
    With fewer than 4 heads there is nothing to embed: the first two principal components are
    returned instead.
    """
    x = _standardize(np.asarray(features, dtype=np.float64))
    n = x.shape[0]
    if n < 4:
        centered = x - x.mean(0)
        u, s, _ = np.linalg.svd(centered, full_matrices=False)
        out = np.zeros((n, 2))
        k = min(2, u.shape[1])
        out[:, :k] = u[:, :k] * s[:k]
        return out
    k = min(15 if n_neighbors is None else integer("n_neighbors", n_neighbors, low=2), n - 1)
    if k < 2:
        raise WorkbenchError(f"n_neighbors must be at least 2; got {n_neighbors!r}")
    threads = torch.get_num_threads()  # umap/numba start-up changes torch's thread count
    try:
        return _fit_umap(x, k, n, seed)
    finally:
        torch.set_num_threads(threads)


def _fit_umap(x: np.ndarray, k: int, n: int, seed: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import umap

        _enable_umap_cache()
        dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))  # (head, head)
        knn = np.argsort(dist, axis=1, kind="stable")[:, :k].astype(np.int32)
        knn_dist = np.take_along_axis(dist, knn, 1).astype(np.float32)
        reducer = umap.UMAP(n_neighbors=k, n_components=2, random_state=seed, n_jobs=1,
                            init="spectral" if n >= 64 else "random",
                            precomputed_knn=(knn, knn_dist, None))
        return reducer.fit_transform(x.astype(np.float32)).astype(np.float64)


def cluster_heads(features: np.ndarray, *, n_clusters: int | None = None, seed: int = 0) -> np.ndarray:
    """K-means clusters of standardized descriptors; k by the best silhouette in 2..min(6, heads/2)
    unless given (at least two heads a cluster on average, so few heads do not split into singletons)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = _standardize(np.asarray(features, dtype=np.float64))
    n = x.shape[0]
    if n_clusters is not None:
        candidates = [integer("n_clusters", n_clusters, low=1, high=n)]  # at most the number of heads
    else:
        candidates = list(range(2, min(6, n // 2) + 1))
    if not candidates or np.allclose(x, x[0]):
        return np.zeros(n, dtype=int)
    best, best_score = None, -np.inf
    for k in candidates:
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
        if len(candidates) == 1:
            return labels
        if len(set(labels)) < 2:
            continue
        score = silhouette_score(x, labels)
        if score > best_score + 1e-9:
            best, best_score = labels, score
    return np.zeros(n, dtype=int) if best is None else best


def name_clusters(frame: pd.DataFrame) -> dict[int, str]:
    """A readable pattern name per cluster (`PATTERN_TRAITS`): the trait on which the cluster's
    mean is highest relative to all heads (z-score), if above `NAME_Z` and the trait's floor;
    clusters that get the same name are numbered ("sink", "sink 2")."""
    cols = [col for _, col, _ in PATTERN_TRAITS]
    spread = frame[cols].std(ddof=0).replace(0.0, np.nan)
    z = (frame.groupby("cluster")[cols].mean() - frame[cols].mean()) / spread  # (cluster, trait)
    means = frame.groupby("cluster")[cols].mean()
    names, seen = {}, {}
    for cluster in means.index:
        best, best_z = "mixed", NAME_Z
        for name, col, floor in PATTERN_TRAITS:
            score = z.loc[cluster, col]
            if pd.notna(score) and score > best_z and means.loc[cluster, col] >= floor:
                best, best_z = name, score
        seen[best] = seen.get(best, 0) + 1
        names[int(cluster)] = best if seen[best] == 1 else f"{best} {seen[best]}"
    return names


# -- the analysis ------------------------------------------------------------------------------------------
def head_patterns(model, prompts, *, local_window: int = 4, n_probes: int = 8, probe_len: int = 24, seed: int = 0,
                  n_neighbors: int | None = None, n_clusters: int | None = None, batch_size: int = 4,
                  backend: str = "auto", capture: Description | None = None) -> pd.DataFrame:
    """Pattern descriptors of every head, a 2-D UMAP of them, and named clusters of pattern types.

    Args:
        model: a `ModelHandle`.
        prompts: strings or token ids for the descriptors (None with ``capture``).
        local_window: local_mass counts the attention on the query and the ``local_window − 1``
            keys before it (a "positional"/local head in Voita et al. 2019's sense); a given
            capture must have been made with the same window.
        n_probes, probe_len, seed: the repeated random-token probes of the detector scores
            (TransformerLens ``head_detector``; induction needs a repeated sequence). They run
            in their own forward over these synthetic tokens, apart from the prompts' capture.
        n_neighbors: UMAP neighbours (default min(15, heads − 1); McInnes et al. 2018).
        n_clusters: k-means clusters (default: the best silhouette over 2..min(6, heads/2)).
        batch_size, backend: `wb.describe` settings when no capture is given.
        capture: a `Description` of these prompts from `wb.describe` (shared with the other
            descriptive analyses).
    Returns:
        DataFrame ``layer, head, entropy, max_prob, sink_mass, local_mass, mean_distance,
        prev_token, duplicate, induction, umap_x, umap_y, cluster, pattern`` with one row per
        head; ``pattern`` is the cluster's readable name (induction, previous-token,
        duplicate-token, sink, local, broad or mixed; see `PATTERN_TRAITS`). ``attrs``:
        ``detector_probes`` (how the detector scores were made) and the first-token attrs.
    Raises:
        WorkbenchError: empty prompts, bad probe settings, bad n_neighbors / n_clusters, a
            capture made with another local_window.
    """
    local_window, n_probes, batch_size = (positive_int(n, v) for n, v in (
        ("local_window", local_window), ("n_probes", n_probes), ("batch_size", batch_size)))
    probe_len, seed = integer("probe_len", probe_len, low=2), integer("seed", seed, low=0)
    desc = resolve(model, prompts, capture, analysis="head_patterns", local_window=local_window,
                   batch_size=batch_size, backend=backend)
    means = desc.row_means().mean(0)  # (layer, head, field), mean over prompts of per-prompt means
    frame = head_frame({"mean_distance" if f == "distance" else f: means[..., i] for i, f in enumerate(ROW_FIELDS)})
    frame = frame.merge(probe_scores(model, n_probes=n_probes, probe_len=probe_len, seed=seed), on=["layer", "head"])
    features = frame[list(FEATURES)].to_numpy()
    embedding = umap_embedding(features, n_neighbors=n_neighbors, seed=seed)
    frame["umap_x"], frame["umap_y"] = embedding[:, 0], embedding[:, 1]
    frame["cluster"] = cluster_heads(features, n_clusters=n_clusters, seed=seed).astype(int)
    frame["pattern"] = frame["cluster"].map(name_clusters(frame))
    frame[["layer", "head"]] = frame[["layer", "head"]].astype(int)
    frame = frame.sort_values(["layer", "head"], ignore_index=True)
    frame.attrs.update(desc.first_token_attrs(), detector_probes=(
        f"prev_token, duplicate and induction come from a separate forward over {n_probes} seeded random token "
        f"sequences of {probe_len} tokens, each repeated twice (seed {seed}; TransformerLens head_detector, "
        "'mul' score), not from the prompts"))
    return frame


def _pattern_figures(frame):
    shown = [c for c in FEATURES if c != "sink_mass"]  # sink_mass repeats sink_scores' sink_score
    return [umap_scatter(frame)] + [head_grid(frame, col) for col in shown]


def _probe_texts(model, prompts) -> dict[str, list[str]]:
    """The repeated random-token probes of the detector scores, decoded for showing."""
    probes = repeated_token_probes(model)
    return {"repeated random tokens (8 × 24, twice, seed 0)": [model.tokenizer.decode(p) for p in probes.tolist()]}


register(Analyzer("head_patterns", head_patterns, "Head pattern types and the UMAP head map", capture=True,
                  figures=_pattern_figures, family="head types", page="head-map", findings=findings.head_types,
                  example="repeated", prompts=_probe_texts, summary=summaries.head_types,
                  sources=("Voita et al. 2019, Analyzing Multi-Head Self-Attention (confidence, positional heads)",
                           "TransformerLens head_detector ('mul' score: previous-token, duplicate, induction)",
                           "McInnes et al. 2018, UMAP", "Li et al. 2023 (pattern types of heads)")))
