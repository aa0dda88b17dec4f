"""Triton kernels for the Mamba-1 mixer, compiled just in time (no build step).

One module per job, each with its ``@triton.jit`` kernel and the Python launcher that sizes its grid:

- ``selective_scan_fwd`` / ``selective_scan_bwd``: the chunked selective scan and its gradients
- ``causal_conv1d_fwd`` / ``causal_conv1d_bwd``: the depthwise causal convolution and its gradients
- ``conv_document_starts`` / ``conv_document_fixup``: packed rows through those: a row's starts as the conv
  kernels read them; the forward's programs a start reaches correct their tile, a launch before the backward
  kernel (on Hopper, beside it) computes its gradients around each start
- ``causal_conv1d_update``: one decoding step of the convolution
- ``selective_state_update``: one decoding step of the scan
- ``device_functions``: the small device functions (softplus, silu, the linear-recurrence combine) they share

Importing any of them needs triton; ``ops.triton_backend`` wraps them in autograd Functions behind the
reference signatures.
"""
