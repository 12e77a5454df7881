"""Fused attention pooling against the reference, forward and backward (CPU: TRITON_INTERPRET=1)."""

import pytest
import torch

from llmrec.kernels.attention_pool import additive_attention_pool, dot_attention_pool
from llmrec.kernels.reference import additive_attention_pool_reference, dot_attention_pool_reference

# (B, L, D): one row, non-power-of-two L and D, several sequence tiles (BLOCK_L = 16 at these D).
SHAPES = [(1, 5, 8), (3, 19, 24), (2, 40, 20)]
DTYPES = [(torch.float32, 1e-5, 1e-4), (torch.float16, 2e-3, 2e-2), (torch.bfloat16, 2e-2, 5e-2)]
# The kernel runs where the tensors live: CUDA when there is one, else the interpreter on CPU.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def inputs(b, length, d, dtype, seed=0, masked_row=True):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, length, d, generator=g).to(dtype)
    lengths = torch.randint(1, length + 1, (b,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    if masked_row and b > 1:
        mask[1] = False  # a fully masked row must pool to zeros, with zero, finite gradients
    return tokens, mask


def compare(run, ref, tensors, atol, rtol):
    """Kernel on DEVICE vs reference on CPU: forward and every input gradient; returns the output on CPU."""
    leaves = [t.detach().clone().to(DEVICE).requires_grad_(t.is_floating_point()) for t in tensors]
    leaves_ref = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in tensors]
    out, out_ref = run(*leaves), ref(*leaves_ref)
    got = out.detach().float().cpu()
    err = (got - out_ref.detach().float()).abs().max().item()
    assert torch.allclose(got, out_ref.detach().float(), atol=atol, rtol=rtol), f"forward max error {err}"
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    out.backward(grad.to(DEVICE))
    out_ref.backward(grad)
    for i, (a, b) in enumerate(zip(leaves, leaves_ref, strict=True)):
        if a.grad is None and b.grad is None:
            continue
        a_grad = a.grad.float().cpu()
        assert torch.isfinite(a_grad).all(), f"input {i}: non-finite gradient"
        e = (a_grad - b.grad.float()).abs().max().item()
        assert torch.allclose(a_grad, b.grad.float(), atol=atol * 10, rtol=rtol * 10), (
            f"input {i} grad max error {e}"
        )
    return out.detach().cpu()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("with_global", [False, True])
def test_dot_form_matches_reference(shape, dtype, atol, rtol, with_global):
    b, length, d = shape
    tokens, mask = inputs(b, length, d, dtype)
    u = torch.randn(b, 6).to(dtype) if with_global else None
    w = torch.randn(d + (6 if with_global else 0))

    def run(t, m, w_, *u_):
        return dot_attention_pool(t, m, w_, u_[0] if u_ else None, force="triton")

    def ref(t, m, w_, *u_):
        return dot_attention_pool_reference(t, m, w_, u_[0] if u_ else None)

    out = compare(run, ref, [tokens, mask, w, *([u] if with_global else [])], atol, rtol)
    if b > 1:
        assert torch.equal(out[1], torch.zeros_like(out[1]))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_additive_form_matches_reference(shape, dtype, atol, rtol):
    b, length, d = shape
    tokens, mask = inputs(b, length, d, dtype)
    g = torch.Generator().manual_seed(2)
    proj, bias, query = (
        torch.randn(12, d, generator=g) / d**0.5,
        torch.randn(12, generator=g),
        torch.randn(12, generator=g),
    )
    out = compare(
        lambda *x: additive_attention_pool(*x, force="triton"),
        additive_attention_pool_reference,
        [tokens, mask, proj, bias, query],
        atol,
        rtol,
    )
    if b > 1:
        assert torch.equal(out[1], torch.zeros_like(out[1]))


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"mask must be \(B, L\)"):
        dot_attention_pool(torch.zeros(2, 3, 4), torch.ones(2, 4), torch.zeros(4))
    with pytest.raises(ValueError, match="w must have 10 entries"):
        dot_attention_pool(torch.zeros(2, 3, 4), torch.ones(2, 3), torch.zeros(4), torch.zeros(2, 6))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(256, 64, 384), (1024, 128, 384)])
def test_cuda_realistic(shape):
    tokens, mask = inputs(*shape, torch.float16)
    tokens, mask = tokens.cuda(), mask.cuda()
    w = torch.randn(shape[2], device="cuda")
    out = dot_attention_pool(tokens, mask, w)
    assert torch.allclose(
        out.float(), dot_attention_pool_reference(tokens, mask, w).float(), atol=2e-3, rtol=2e-2
    )
