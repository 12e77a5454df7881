"""One rule for every kernel: CUDA tensors run the Triton kernel, everything else the reference.

`force="triton"` runs the kernel anyway (on CPU tensors that needs TRITON_INTERPRET=1, as the tests
set); `force="reference"` always runs the PyTorch reference. LLMREC_KERNELS=reference forces the
reference process-wide (a way to rule the kernels out when chasing a bug), LLMREC_KERNELS=triton the
kernels. A kernel that measures slower than its reference on CUDA passes `cuda_default=False`, so "auto"
keeps the reference until the kernel wins (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import os

import torch


def use_triton(tensor: torch.Tensor, force: str | None = None, cuda_default: bool = True) -> bool:
    choice = force or os.environ.get("LLMREC_KERNELS")
    if choice not in (None, "", "auto", "triton", "reference"):
        raise ValueError(f"kernel choice must be 'triton', 'reference' or 'auto', got {choice!r}")
    if choice == "reference":
        return False
    if choice == "triton":
        return True
    return tensor.is_cuda and cuda_default
