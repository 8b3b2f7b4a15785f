"""The gated MLP's activations beyond silu (Llama hidden_act gelu, gelu_pytorch_tanh, swish): the torch
reference against transformers' ACT2FN, the Triton kernel (interpreter on CPU, compiled on a GPU) against it."""

import pytest
import torch

from engine.config import ACTIVATIONS
from engine.kernels import activation
from engine.kernels.testing import assert_close, triton_test_device

DEV = triton_test_device()
needs_triton = pytest.mark.skipif(DEV is None, reason="triton is not installed")


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ref_matches_hf_act2fn(act, dtype):
    act2fn = pytest.importorskip("transformers.activations").ACT2FN
    x = (torch.randn(5, 2 * 48) * 3).to(dtype)
    gate, up = x[:, :48], x[:, 48:]
    assert torch.equal(activation.silu_and_mul_ref(x, activation=act), act2fn[act](gate) * up)


@needs_triton
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_matches_ref(act, dtype):
    x = (torch.randn(3, 2 * 1500) * 3).to(dtype).to(DEV)
    out = activation.silu_and_mul(x, activation=act)
    ref = activation.silu_and_mul_ref(x, activation=act)
    assert_close(out, ref, dtype)
    if dtype == torch.bfloat16:  # the same two roundings as HF: nearly every element bit-equal (a GPU's erf
        # and tanh differ from the CPU's in the last bit of some fp32 values: 1.1% of elements differ on an H200)
        assert (out != ref).double().mean() < 0.03


def test_activations_differ():
    """The variants compute different functions (a kernel ignoring `activation` would fail above)."""
    x = torch.randn(4, 64) * 3
    outs = [activation.silu_and_mul_ref(x, activation=a) for a in ("silu", "gelu", "gelu_pytorch_tanh")]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2], atol=1e-6)
