"""Kernel tests run the Triton kernels in the interpreter when there is no GPU.

TRITON_INTERPRET must be set before the kernels are decorated, i.e. before
kernels/head_stats/triton.py is imported (head_stats imports it lazily on first use).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
