"""The result type of `kernels.head_stats`, shared by every backend."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch

from kernels.errors import WorkbenchError

if TYPE_CHECKING:  # pandas is imported only when a frame is asked for
    import pandas as pd

ROW_FIELDS = ("lse", "entropy", "max_prob", "argmax", "sink_mass", "local_mass")


@dataclass(frozen=True, eq=False)
class HeadStats:
    """Per-query-row attention statistics of every head, and per-key column mass.

    All float tensors are float32; `argmax` is int64. A query row whose keys are all masked
    out (key padding, or causal with only padded keys visible) has lse = -inf, entropy = 0,
    max_prob = 0, argmax = -1, sink_mass = local_mass = 0, and adds nothing to col_mass.
    `argmax` and `col_mass` are None when they were not asked for (each costs work of its own).
    """

    lse: torch.Tensor  # (B, Hq, N) log-sum-exp of the scaled logits of the row
    entropy: torch.Tensor  # (B, Hq, N) Shannon entropy of the row, nats
    max_prob: torch.Tensor  # (B, Hq, N) largest attention probability of the row
    argmax: torch.Tensor | None  # (B, Hq, N) int64 key of the largest logit (first on ties); None if not asked for
    sink_mass: torch.Tensor  # (B, Hq, N) attention on keys [0, sink_tokens)
    local_mass: torch.Tensor  # (B, Hq, N) attention on keys (qpos - window, qpos]
    col_mass: torch.Tensor | None = None  # (B, Hq, M) Σ_t p[t, k]; None if not asked for

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The tensors by field name; `argmax` and `col_mass` are left out when not computed."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def to(self, device: torch.device | str) -> HeadStats:
        """A copy with every tensor moved to `device`."""
        return HeadStats(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                            for f in fields(self)})

    def to_frame(self) -> pd.DataFrame:
        """Row statistics as a tidy frame.

        Returns:
            DataFrame with one row per (batch, head, query) and columns
            `batch, head, query, lse, entropy, max_prob, argmax, sink_mass, local_mass`
            (`argmax` only when it was computed).
        """
        import pandas as pd

        B, H, N = self.lse.shape
        idx = torch.cartesian_prod(torch.arange(B), torch.arange(H), torch.arange(N))  # (B*H*N, 3)
        cols = {"batch": idx[:, 0].numpy(), "head": idx[:, 1].numpy(), "query": idx[:, 2].numpy()}
        for name in ROW_FIELDS:
            if getattr(self, name) is not None:
                cols[name] = getattr(self, name).detach().reshape(-1).cpu().numpy()
        return pd.DataFrame(cols)

    def col_frame(self) -> pd.DataFrame:
        """Column mass as a tidy frame: one row per (batch, head, key), columns
        `batch, head, key, col_mass`. Raises WorkbenchError if col_mass was not computed."""
        import pandas as pd

        if self.col_mass is None:
            raise WorkbenchError(
                "col_mass was not computed (column_mass=False); "
                "call head_stats(..., column_mass=True) to get a column frame"
            )
        B, H, M = self.col_mass.shape
        idx = torch.cartesian_prod(torch.arange(B), torch.arange(H), torch.arange(M))  # (B*H*M, 3)
        return pd.DataFrame(
            {
                "batch": idx[:, 0].numpy(),
                "head": idx[:, 1].numpy(),
                "key": idx[:, 2].numpy(),
                "col_mass": self.col_mass.detach().reshape(-1).cpu().numpy(),
            }
        )
