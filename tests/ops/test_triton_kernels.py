"""The Triton backend against the PyTorch reference: forward, gradients and decoding steps on random inputs.

Runs on a CUDA device with triton installed, or on the CPU under Triton's interpreter (``TRITON_INTERPRET=1
pytest -m gpu tests/ops``, as CI runs it: fp32 only, the tensors then live on the CPU); skipped (not failed)
anywhere else.

Tolerances (relative error ||out - ref|| / ||ref||): fp32 well under 1e-3; bf16/fp16 inputs under 1e-2 against
the fp32 reference run on the same (rounded) inputs, which is what rounding the outputs alone costs.
"""

from __future__ import annotations

import importlib.util
import math
import os

import pytest
import torch

from modeling_apriel_h1.ops import reference

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
HAS_TRITON = importlib.util.find_spec("triton") is not None
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed"),
    pytest.mark.skipif(not torch.cuda.is_available() and not INTERPRETED,
                       reason="needs a CUDA device (or TRITON_INTERPRET=1 to run the kernels on the CPU)"),
]

FP32_TOLERANCE = 1e-4
LOW_PRECISION_TOLERANCE = 1e-2
# under the interpreter (CI, on the CPU) fp32 only: its bf16 matmuls are unreliable, and each dtype costs time
DTYPES = [torch.float32] if INTERPRETED else [torch.float32, torch.bfloat16, torch.float16]
UPDATE_DTYPES = [torch.float32] if INTERPRETED else [torch.float32, torch.bfloat16]


@pytest.fixture(scope="module")
def triton_ops():
    from modeling_apriel_h1.ops import triton_backend

    return triton_backend


def _chunk() -> int:
    from modeling_apriel_h1.ops.triton_kernels.scan_config import SCAN_TILES

    return SCAN_TILES.chunk


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, measured against an RMS of at least 1e-3 so that a reference that is exactly
    zero (dA of a one-step scan from a zero state) is compared by absolute error instead of by rounding noise."""
    assert torch.isfinite(out).all(), "output has NaN or inf"
    floor = 1e-3 * ref.numel() ** 0.5
    return ((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(floor)).item()


def tolerance(dtype: torch.dtype) -> float:
    return FP32_TOLERANCE if dtype == torch.float32 else LOW_PRECISION_TOLERANCE


def scan_inputs(batch: int, dim: int, groups: int, n_states: int, length: int, dtype: torch.dtype,
                softplus: bool, seed: int) -> dict[str, torch.Tensor]:
    """Inputs shaped like a trained Mamba mixer's: A = -(1..N), dt between 1e-3 and 1e-1 after the softplus."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE)

    dt_target = torch.exp(torch.rand(dim, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    inputs = {
        "u": randn(batch, dim, length).to(dtype),
        "A": -(torch.arange(1, n_states + 1).float().repeat(dim, 1) * (1 + 0.1 * torch.rand(dim, n_states, generator=g))).to(DEVICE),
        "B": randn(batch, groups, n_states, length).to(dtype),
        "C": randn(batch, groups, n_states, length).to(dtype),
        "D": randn(dim),
        "z": randn(batch, dim, length).to(dtype),
    }
    if softplus:
        inputs["delta"] = randn(batch, dim, length, scale=0.5).to(dtype)
        inputs["delta_bias"] = (dt_target + torch.log(-torch.expm1(-dt_target))).to(DEVICE)  # softplus^-1(dt)
    else:
        inputs["delta"] = (torch.rand(batch, dim, length, generator=g) * 0.1).to(DEVICE).to(dtype)
    return inputs


def as_reference_inputs(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp32 leaf copies of the same values, for the reference and its autograd."""
    return {k: v.detach().float().clone().requires_grad_(True) for k, v in inputs.items()}


# (batch, dim, groups, N, L): odd lengths, one chunk exactly, one step past a chunk, many chunks, several full
# chunks (the backward then drops its masks); B/C shared
# by all channels (G=1), Apriel's 16 channels per group, and 4 channels per group with N = 8.
SCAN_SHAPES = [
    (1, 32, 2, 16, 1),
    (2, 32, 2, 16, 7),
    (2, 64, 4, 16, "chunk"),
    (1, 32, 1, 16, "chunk+1"),
    (2, 32, 2, 16, "3 chunks"),
    (2, 48, 12, 8, 300),
]
# The interpreter runs each (batch, channel) program in Python (CI's time goes there): the same lengths and
# groupings at an eighth of the channels (2 to 4 per group) and one row, but for one shape that keeps two rows.
INTERPRETED_SCAN_SHAPES = [
    (1, 4, 2, 16, 1),
    (2, 4, 2, 16, 7),
    (1, 8, 4, 16, "chunk"),
    (1, 4, 1, 16, "chunk+1"),
    (1, 4, 2, 16, "3 chunks"),
    (1, 6, 3, 8, 300),
]
SCAN_DIM = 4 if INTERPRETED else 32  # channels of the other scan tests


SERIES = {"u", "delta", "B", "C", "z"}  # the scan inputs with a time axis


def _length(length: int | str) -> int:
    return {"chunk": _chunk(), "chunk+1": _chunk() + 1, "3 chunks": 3 * _chunk()}.get(length, length)


@pytest.mark.parametrize("shape", INTERPRETED_SCAN_SHAPES if INTERPRETED else SCAN_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_initial_state", [False, True])
def test_selective_scan_forward_and_gradients_match_reference(triton_ops, shape, dtype, with_initial_state):
    batch, dim, groups, n_states, length = shape
    length = _length(length)
    inputs = scan_inputs(batch, dim, groups, n_states, length, dtype, softplus=True, seed=length + dim)
    if with_initial_state:
        inputs["initial_state"] = torch.randn(batch, dim, n_states, device=DEVICE)
    ours = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    ref = as_reference_inputs(inputs)

    y, last = triton_ops.selective_scan(**ours, delta_softplus=True, return_last_state=True)
    y_ref, last_ref = reference.selective_scan(**ref, delta_softplus=True, return_last_state=True)
    assert y.dtype == dtype and last.dtype == torch.float32
    assert relative_error(y, y_ref) < tolerance(dtype)
    assert relative_error(last, last_ref) < tolerance(dtype)

    dy = torch.randn_like(y_ref)
    d_last = torch.randn_like(last_ref)
    torch.autograd.backward((y, last), (dy.to(dtype), d_last))
    torch.autograd.backward((y_ref, last_ref), (dy.to(dtype).float(), d_last))
    for name in inputs:
        assert ours[name].grad is not None, name
        assert ours[name].grad.dtype == inputs[name].dtype, name
        error = relative_error(ours[name].grad, ref[name].grad)
        assert error < tolerance(dtype), f"d{name}: relative error {error:.2e}"


@pytest.mark.parametrize("with_z", [False, True])
@pytest.mark.parametrize("with_D", [False, True])
def test_selective_scan_optional_inputs(triton_ops, with_z, with_D):
    """Without softplus, delta bias, D or the gate, each missing term is simply absent, as in the reference."""
    inputs = scan_inputs(2, SCAN_DIM, 2, 16, 45, torch.float32, softplus=False, seed=3)
    if not with_z:
        del inputs["z"]
    if not with_D:
        del inputs["D"]
    ours = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    ref = as_reference_inputs(inputs)
    y = triton_ops.selective_scan(**ours)
    y_ref = reference.selective_scan(**ref)
    assert relative_error(y, y_ref) < FP32_TOLERANCE
    dy = torch.randn_like(y_ref)
    y.backward(dy)
    y_ref.backward(dy)
    for name in inputs:
        assert relative_error(ours[name].grad, ref[name].grad) < FP32_TOLERANCE, name


def test_selective_scan_in_two_calls_equals_one_call(triton_ops):
    """A cache continues a sequence: scanning [0, 100) then [100, 237) from the returned state is one scan."""
    inputs = scan_inputs(2, SCAN_DIM, 2, 16, 237, torch.float32, softplus=True, seed=5)
    whole, last = triton_ops.selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    head = {k: (v[..., :100] if k in SERIES else v) for k, v in inputs.items()}
    tail = {k: (v[..., 100:] if k in SERIES else v) for k, v in inputs.items()}
    y_head, state = triton_ops.selective_scan(**head, delta_softplus=True, return_last_state=True)
    y_tail, last_split = triton_ops.selective_scan(**tail, delta_softplus=True, initial_state=state, return_last_state=True)
    assert relative_error(torch.cat([y_head, y_tail], -1), whole) < FP32_TOLERANCE
    assert relative_error(last_split, last) < FP32_TOLERANCE


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim,groups", [(8, 4), (10, 5)] if INTERPRETED else [(64, 4), (40, 5)])
def test_selective_state_update_matches_reference(triton_ops, dtype, dim, groups):
    batch, n_states = 3, 16
    inputs = scan_inputs(batch, dim, groups, n_states, 1, dtype, softplus=True, seed=dim)
    step = {"x": inputs["u"][..., 0], "dt": inputs["delta"][..., 0], "A": inputs["A"], "B": inputs["B"][..., 0],
            "C": inputs["C"][..., 0], "D": inputs["D"], "z": inputs["z"][..., 0], "dt_bias": inputs["delta_bias"]}
    # The cache is a strided view into a larger buffer: the kernel must write the state where it lives.
    cache = torch.randn(batch, dim, 2 * n_states, device=DEVICE)
    state = cache[..., ::2]
    state_ref = state.clone()
    y = triton_ops.selective_state_update(state, **step, dt_softplus=True)
    y_ref = reference.selective_state_update(state_ref, **{k: v.float() for k, v in step.items()}, dt_softplus=True)
    assert y.dtype == dtype
    assert relative_error(y, y_ref) < tolerance(dtype)
    assert relative_error(cache[..., ::2], state_ref) < tolerance(dtype)


def test_decoding_continues_the_scan(triton_ops):
    """Prefill 50 steps with the scan, then decode 5 with the state update: the outputs are the 55-step scan's."""
    inputs = scan_inputs(2, SCAN_DIM, 2, 16, 55, torch.float32, softplus=True, seed=11)
    whole = triton_ops.selective_scan(**inputs, delta_softplus=True)
    prefill = {k: (v[..., :50] if k in SERIES else v) for k, v in inputs.items()}
    _, state = triton_ops.selective_scan(**prefill, delta_softplus=True, return_last_state=True)
    for t in range(50, 55):
        y = triton_ops.selective_state_update(
            state, inputs["u"][..., t], inputs["delta"][..., t], inputs["A"], inputs["B"][..., t], inputs["C"][..., t],
            inputs["D"], inputs["z"][..., t], inputs["delta_bias"], dt_softplus=True,
        )
        assert relative_error(y, whole[..., t]) < FP32_TOLERANCE


def conv_inputs(batch: int, dim: int, width: int, length: int, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(batch, dim, length, generator=g).to(DEVICE, dtype),
        "weight": (torch.randn(dim, width, generator=g) / math.sqrt(width)).to(DEVICE),
        "bias": torch.randn(dim, generator=g).to(DEVICE),
        "initial_state": torch.randn(batch, dim, width, generator=g).to(DEVICE, dtype),
    }


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("length", [1, 3, 300])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_initial_state", [False, True])
def test_causal_conv1d_forward_and_gradients_match_reference(triton_ops, width, length, dtype, with_initial_state):
    inputs = conv_inputs(2, 24, width, length, dtype, seed=width * 1000 + length)
    if not with_initial_state:
        del inputs["initial_state"]
    ours = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    ref = as_reference_inputs(inputs)
    out, state = triton_ops.causal_conv1d(**ours)
    out_ref, state_ref = reference.causal_conv1d(**ref)
    assert out.dtype == dtype and state.shape == state_ref.shape
    assert relative_error(out, out_ref) < tolerance(dtype)
    assert torch.equal(state.float(), state_ref.detach())

    dout, dstate = torch.randn_like(out_ref), torch.randn_like(state_ref)
    torch.autograd.backward((out, state), (dout.to(dtype), dstate.to(dtype)))
    torch.autograd.backward((out_ref, state_ref), (dout.to(dtype).float(), dstate.to(dtype).float()))
    for name in inputs:
        error = relative_error(ours[name].grad, ref[name].grad)
        assert error < tolerance(dtype), f"d{name}: relative error {error:.2e}"


def test_causal_conv1d_without_bias_or_activation(triton_ops):
    inputs = conv_inputs(2, 24, 4, 77, torch.float32, seed=1)
    del inputs["bias"]
    ours = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    ref = as_reference_inputs(inputs)
    out, _ = triton_ops.causal_conv1d(**ours, activation=None)
    out_ref, _ = reference.causal_conv1d(**ref, activation=None)
    assert relative_error(out, out_ref) < FP32_TOLERANCE
    dout = torch.randn_like(out_ref)
    out.backward(dout)
    out_ref.backward(dout)
    for name in inputs:
        assert relative_error(ours[name].grad, ref[name].grad) < FP32_TOLERANCE, name


def test_causal_conv1d_rejects_unknown_activation(triton_ops):
    inputs = conv_inputs(1, 8, 4, 5, torch.float32, seed=2)
    with pytest.raises(ValueError, match="gelu"):
        triton_ops.causal_conv1d(**inputs, activation="gelu")


@pytest.mark.parametrize("width", [1, 5])
def test_causal_conv1d_rejects_widths_outside_2_to_4(triton_ops, width):
    inputs = conv_inputs(1, 8, width, 5, torch.float32, seed=2)
    with pytest.raises(ValueError, match=f"conv width {width} must be 2 to 4"):
        triton_ops.causal_conv1d(**inputs)


@pytest.mark.parametrize("dtype", UPDATE_DTYPES)
@pytest.mark.parametrize("width", [2, 4])
def test_causal_conv1d_update_continues_the_convolution(triton_ops, dtype, width):
    """Decoding 4 tokens one by one from the prefill's conv state gives the full convolution's last outputs."""
    inputs = conv_inputs(3, 100, width, 20, dtype, seed=width)
    del inputs["initial_state"]
    whole, _ = reference.causal_conv1d(**{k: v.float() for k, v in inputs.items()})
    _, conv_state = triton_ops.causal_conv1d(inputs["x"][..., :16], inputs["weight"], inputs["bias"])
    for t in range(16, 20):
        out = triton_ops.causal_conv1d_update(inputs["x"][..., t], conv_state, inputs["weight"], inputs["bias"])
        assert out.dtype == dtype
        assert relative_error(out, whole[..., t]) < tolerance(dtype)
    assert torch.equal(conv_state, inputs["x"][..., -width:])


def test_causal_conv1d_update_matches_reference_without_activation(triton_ops):
    inputs = conv_inputs(2, 40, 3, 1, torch.float32, seed=9)
    state, state_ref = inputs["initial_state"].clone(), inputs["initial_state"].clone()
    out = triton_ops.causal_conv1d_update(inputs["x"][..., 0], state, inputs["weight"], None, activation=None)
    out_ref = reference.causal_conv1d_update(inputs["x"][..., 0], state_ref, inputs["weight"], None, activation=None)
    assert relative_error(out, out_ref) < FP32_TOLERANCE
    assert torch.equal(state, state_ref)


def test_no_output_is_left_unwritten(triton_ops):
    """Outputs come from torch.empty: NaN-poisoned memory must never leak into them."""
    poison = torch.full((1 << 20,), float("nan"), device=DEVICE)
    del poison  # on CUDA, the caching allocator hands this NaN-filled block to the next allocations
    inputs = scan_inputs(2, SCAN_DIM, 2, 16, 70, torch.float32, softplus=True, seed=8)
    ours = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    y = triton_ops.selective_scan(**ours, delta_softplus=True)
    y.backward(torch.randn_like(y))
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(v.grad).all() for v in ours.values())
