"""Triton kernels for the Mamba-1 mixer and the decode engine, compiled just in time (no build step).

One module per job, each with its ``@triton.jit`` kernel and the Python launcher that sizes its grid.

The mixer's operations (``ops.triton_backend`` wraps them in autograd Functions behind the reference signatures):

- ``selective_scan_fwd`` / ``selective_scan_bwd``: the chunked selective scan and its gradients; ``scan_config``:
  their tile sizes, in one place because both must agree on the chunk
- ``causal_conv1d_fwd`` / ``causal_conv1d_bwd``: the depthwise causal convolution and its gradients;
  ``conv_runs``: the aligned 8-step runs both load, and the step shifts read from them
- ``conv_document_starts`` / ``conv_document_fixup``: packed rows through those: a row's starts as the conv
  kernels read them; the forward's programs a start reaches correct their tile, a launch before the backward
  kernel (on Hopper, beside it) computes its gradients around each start
- ``causal_conv1d_update``: one decoding step of the convolution
- ``selective_state_update``: one decoding step of the scan
- ``device_functions``: the small device functions (softplus, silu, the linear-recurrence combine) they share

The decode engine's fused step (``decoding.DecodeEngine`` with ``fused=True``):

- ``mamba_decode_step``: a Mamba layer's conv step and state update in one kernel, x and B read at KV width
- ``decode_fused``: add + RMSNorm, rotary + KV-cache write, SiLU x up
- ``split_k_decode_attention``: split-K attention of one new token over the live keys (``ops.decode_attention`` chooses
  it, flash-attn or the reference)

Importing any of them needs triton.
"""
