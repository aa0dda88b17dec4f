"""Device functions shared by the kernels, written once so that forward and backward agree bit for bit."""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x * LOG2E); exp2 is one hardware instruction


@triton.jit
def softplus(x):
    """``log(1 + exp(x))``, returning ``x`` above 20 as torch does (exp would overflow, and it is exact there)."""
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def silu(x):
    return x * sigmoid(x)


@triton.jit
def silu_grad(x):
    """d silu(x) / dx = sigmoid(x) * (1 + x * (1 - sigmoid(x)))."""
    s = sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


@triton.jit
def state_step(h, x, dt, A, B, C):
    """One step of the selective state: ``h <- exp(dt A) h + dt x B`` and its read-out ``y = C . h``, for a block of
    channels: h, A, B, C (channels, N); x, dt (channels,) with dt's bias and softplus already applied. Shared by
    the decoding kernels (``selective_state_update``, ``mamba_decode_step``) so they cannot drift apart."""
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * B
    return h, tl.sum(h * C, axis=1)


@triton.jit
def linear_recurrence_combine(decay_first, value_first, decay_second, value_second):
    """Compose two steps of ``h -> decay * h + value``, the first applied before the second.

    Composition of affine maps is associative, which is what lets ``tl.associative_scan`` run the recurrence
    ``h_t = a_t h_{t-1} + b_t`` in log depth inside a chunk. With ``reverse=True`` the scan walks from the end,
    so the same combine computes ``g_t = a_t g_{t+1} + c_t`` (the backward recurrence).
    """
    return decay_first * decay_second, decay_second * value_first + value_second
