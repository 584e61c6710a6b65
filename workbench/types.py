"""Tensor shapes named once (jaxtyping annotations; documentation, not runtime checks)."""

from jaxtyping import Float, Int
from torch import Tensor

Pattern = Float[Tensor, "batch head query key"]
Tokens = Int[Tensor, "batch pos"]
Query = Float[Tensor, "batch head_q query d_head"]
Key = Float[Tensor, "batch head_kv key d_head"]
RowStat = Float[Tensor, "batch head_q query"]
ColStat = Float[Tensor, "batch head_q key"]
