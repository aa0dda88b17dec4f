"""Packed rows: with ``document_starts``, the scan and the conv compute each document as if it ran alone.

Every backend that accepts ``document_starts`` is checked the same way: a row packing several documents (two rows
with different layouts) is run once with the starts marked, each document is run alone through the reference
without them, and the outputs, the input gradients (per document) and the parameter gradients (summed over the
documents) must agree. The layouts put starts at a conv run's first step, mid-run, at a scan chunk boundary and
on documents of one and two tokens. The Triton conv is also compared with the reference given the same starts,
on rows with a start at every step of a run, at tiles' first and last steps and between documents shorter than
the conv. The reference runs here on the CPU; the Triton kernels run under the ``gpu`` marker on CUDA, or on the
CPU with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from modeling_apriel_h1.ops import reference

from .test_triton_kernels import relative_error, scan_inputs

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
TRITON_RUNS_HERE = importlib.util.find_spec("triton") is not None and (torch.cuda.is_available() or INTERPRETED)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# each row: document lengths in order (both rows of a batch have the same total)
LAYOUTS = {
    "run and chunk edges": [[8, 56, 64, 9], [64, 1, 2, 70]],
    "mid-run starts": [[13, 130, 60], [3, 200]],
    # long stretches no start reaches: there the conv kernels' own outputs and gradients stand
    "long documents": [[300, 41], [5, 336]],
}
# conv rows given as start positions (L 300): a start at every step of a run (0..7), at a tile's first step (128,
# 256) and at its last (127, 255), documents shorter than the conv (1, 2 and 3 steps), one across a run boundary
# (6..7), and a second row whose first document continues the conv state (no start at 0) and whose last is one step
CONV_EDGE_STARTS = [
    [0, 9, 18, 27, 36, 45, 54, 63, 128, 129, 131, 134, 200, 249, 255, 256, 257, 259, 262],
    [5, 6, 8, 11, 15, 100, 123, 126, 127, 128, 130, 133, 250, 251, 253, 256, 290, 299],
]
CONV_EDGE_LENGTH = 300
TRITON_ONLY = [
    pytest.mark.gpu,
    pytest.mark.skipif(not TRITON_RUNS_HERE, reason="needs triton and a CUDA device (or TRITON_INTERPRET=1)"),
]
BACKENDS = [
    pytest.param("reference", id="reference"),
    pytest.param("triton", id="triton", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not TRITON_RUNS_HERE, reason="needs triton and a CUDA device (or TRITON_INTERPRET=1)"),
    ]),
]
DTYPES = {"reference": [torch.float32], "triton": [torch.float32] if INTERPRETED else [torch.float32, torch.bfloat16]}
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
SERIES = {"u", "delta", "B", "C", "z", "x"}  # inputs with a time axis, split by document
SCAN_DIM = 8 if INTERPRETED else 32  # the interpreter runs each (batch, channel) program in Python


def _ops(backend: str):
    if backend == "reference":
        return reference
    from modeling_apriel_h1.ops import triton_backend

    return triton_backend


def document_starts(layout: list[list[int]]) -> torch.Tensor:
    rows = []
    for lengths in layout:
        starts = torch.zeros(sum(lengths), dtype=torch.bool)
        starts[torch.tensor([0, *lengths[:-1]]).cumsum(0)] = True
        rows.append(starts)
    return torch.stack(rows).to(DEVICE)


def conv_edge_starts() -> torch.Tensor:
    """(2, CONV_EDGE_LENGTH) bool starts at ``CONV_EDGE_STARTS``."""
    starts = torch.zeros(len(CONV_EDGE_STARTS), CONV_EDGE_LENGTH, dtype=torch.bool)
    for row, positions in enumerate(CONV_EDGE_STARTS):
        starts[row, positions] = True
    return starts.to(DEVICE)


def documents(layout: list[list[int]]):
    """(row, start, end) of every document."""
    for row, lengths in enumerate(layout):
        start = 0
        for length in lengths:
            yield row, start, start + length
            start += length


def run_packed_and_alone(op, op_alone, inputs: dict[str, torch.Tensor], layout, **kwargs):
    """The op on the packed rows (through ``op``) and on each document alone (the fp32 reference), with the
    gradients of a random weighting of the outputs. Returns (packed outputs, packed grads, alone outputs,
    alone grads), the outputs and series gradients reassembled into the packed layout."""
    packed = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    out = op(**packed, document_starts=document_starts(layout), **kwargs)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    (out.float() * weights).sum().backward()

    alone = {k: v.detach().float().clone().requires_grad_(True) for k, v in inputs.items()}
    out_alone = torch.zeros_like(out, dtype=torch.float32)
    for row, start, end in documents(layout):
        piece = {k: (v[row : row + 1, ..., start:end] if k in SERIES else v) for k, v in alone.items()}
        y = op_alone(**piece, **kwargs)
        (y * weights[row : row + 1, ..., start:end]).sum().backward()
        out_alone[row : row + 1, ..., start:end] = y.detach()
    return out, {k: v.grad for k, v in packed.items()}, out_alone, {k: v.grad for k, v in alone.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", list(LAYOUTS.values()), ids=list(LAYOUTS))
def test_scan_of_a_packed_row_equals_its_documents_alone(backend, layout):
    for dtype in DTYPES[backend]:
        inputs = scan_inputs(2, SCAN_DIM, 2, 16, sum(layout[0]), dtype, softplus=True, seed=7)
        out, grads, out_alone, grads_alone = run_packed_and_alone(
            _ops(backend).selective_scan, reference.selective_scan, inputs, layout, delta_softplus=True)
        assert relative_error(out, out_alone) < TOLERANCE[dtype], dtype
        for name in inputs:
            error = relative_error(grads[name], grads_alone[name])
            assert error < TOLERANCE[dtype], f"{dtype} d{name}: relative error {error:.2e}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_state_that_never_decays_still_restarts_at_each_document(backend):
    """A = 0 on some states (decay 1: the state sums its inputs) is the edge of the scan's contract (A <= 0);
    packed, those states too start each document from zero."""
    layout = LAYOUTS["mid-run starts"]
    inputs = scan_inputs(2, SCAN_DIM, 2, 16, sum(layout[0]), torch.float32, softplus=True, seed=3)
    inputs["A"][:, ::4] = 0.0
    out, grads, out_alone, grads_alone = run_packed_and_alone(
        _ops(backend).selective_scan, reference.selective_scan, inputs, layout, delta_softplus=True)
    assert relative_error(out, out_alone) < TOLERANCE[torch.float32]
    for name in inputs:
        error = relative_error(grads[name], grads_alone[name])
        assert error < TOLERANCE[torch.float32], f"d{name}: relative error {error:.2e}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", list(LAYOUTS.values()), ids=list(LAYOUTS))
@pytest.mark.parametrize("width", [2, 4])
def test_conv_of_a_packed_row_equals_its_documents_alone(backend, layout, width):
    for dtype in DTYPES[backend]:
        g = torch.Generator().manual_seed(width)
        inputs = {
            "x": torch.randn(2, 24, sum(layout[0]), generator=g).to(DEVICE, dtype),
            "weight": torch.randn(24, width, generator=g).to(DEVICE, dtype),
            "bias": torch.randn(24, generator=g).to(DEVICE, dtype),
        }

        def conv(op):
            def output_only(**kw):  # as a forward without a cache (training) calls it
                out, final_states = op(**kw, activation="silu", return_final_states=False)
                assert final_states is None
                return out

            return output_only

        out, grads, out_alone, grads_alone = run_packed_and_alone(
            conv(_ops(backend).causal_conv1d), conv(reference.causal_conv1d), inputs, layout)
        assert relative_error(out, out_alone) < TOLERANCE[dtype], dtype
        for name in inputs:
            error = relative_error(grads[name], grads_alone[name])
            assert error < TOLERANCE[dtype], f"{dtype} d{name}: relative error {error:.2e}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_start_at_the_first_step_drops_the_cached_state(backend):
    """The start of a chunk continues the cache unless a document starts there: then it is a fresh sequence."""
    ops = _ops(backend)
    inputs = scan_inputs(1, SCAN_DIM, 2, 16, 40, torch.float32, softplus=True, seed=3)
    state = torch.randn(1, SCAN_DIM, 16, device=DEVICE)
    conv_state = torch.randn(1, SCAN_DIM, 4, device=DEVICE)
    weight = torch.randn(SCAN_DIM, 4, device=DEVICE)
    starts = torch.zeros(1, 40, dtype=torch.bool, device=DEVICE)
    starts[0, 0] = True
    fresh = reference.selective_scan(**inputs, delta_softplus=True)
    continued = reference.selective_scan(**inputs, delta_softplus=True, initial_state=state)
    restarted = ops.selective_scan(**inputs, delta_softplus=True, initial_state=state, document_starts=starts)
    not_restarted = ops.selective_scan(**inputs, delta_softplus=True, initial_state=state,
                                       document_starts=torch.zeros_like(starts))
    assert relative_error(restarted, fresh) < 1e-5
    assert relative_error(not_restarted, continued) < 1e-5
    conv_fresh, _ = reference.causal_conv1d(inputs["u"], weight)
    conv_restarted, _ = ops.causal_conv1d(inputs["u"], weight, initial_state=conv_state, document_starts=starts)
    assert relative_error(conv_restarted, conv_fresh) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("last_length", [1, 3, 9])
def test_states_after_a_packed_row_are_its_last_documents(backend, last_length):
    """What a cache would keep after a packed row (final SSM state, last conv inputs) belongs to the last document
    alone: a decode continuing the row continues that document."""
    ops = _ops(backend)
    length = 50
    inputs = scan_inputs(1, SCAN_DIM, 2, 16, length, torch.float32, softplus=True, seed=last_length)
    weight = torch.randn(SCAN_DIM, 4, device=DEVICE)
    starts = torch.zeros(1, length, dtype=torch.bool, device=DEVICE)
    starts[0, [0, 20, length - last_length]] = True
    last = {k: (v[..., length - last_length :] if k in SERIES else v) for k, v in inputs.items()}
    _, state = ops.selective_scan(**inputs, delta_softplus=True, return_last_state=True, document_starts=starts)
    _, state_alone = reference.selective_scan(**last, delta_softplus=True, return_last_state=True)
    assert relative_error(state, state_alone) < 1e-5
    _, conv_state = ops.causal_conv1d(inputs["u"], weight, document_starts=starts)
    _, conv_state_alone = reference.causal_conv1d(last["u"], weight)
    torch.testing.assert_close(conv_state, conv_state_alone, rtol=0, atol=0)


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("with_initial_state", [False, True])
@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("backend", [pytest.param("triton", marks=TRITON_ONLY)])
def test_conv_matches_the_reference_wherever_a_document_starts(backend, width, with_initial_state, activation):
    """The Triton conv against the reference, both given the starts, at every place a start can fall relative to
    the kernels' runs and tiles (``CONV_EDGE_STARTS``): outputs and the gradients of x, the filter, the bias and
    the conv state, fp32 and (on CUDA) bf16 against the fp32 reference on the same rounded inputs; with SiLU and
    a bias, and as a plain linear filter without either."""
    starts = conv_edge_starts()
    for dtype in DTYPES[backend]:
        g = torch.Generator().manual_seed(width)
        inputs = {
            "x": torch.randn(2, 24, CONV_EDGE_LENGTH, generator=g).to(DEVICE, dtype),
            "weight": torch.randn(24, width, generator=g).to(DEVICE, dtype),
        }
        if activation is not None:
            inputs["bias"] = torch.randn(24, generator=g).to(DEVICE, dtype)
        if with_initial_state:
            inputs["initial_state"] = torch.randn(2, 24, width, generator=g).to(DEVICE, dtype)
        ours = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        ref = {k: v.float().requires_grad_(True) for k, v in inputs.items()}
        out, _ = _ops(backend).causal_conv1d(**ours, activation=activation, document_starts=starts,
                                             return_final_states=False)
        out_ref, _ = reference.causal_conv1d(**ref, activation=activation, document_starts=starts,
                                             return_final_states=False)
        assert relative_error(out, out_ref) < TOLERANCE[dtype], dtype
        dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
        out.backward(dout)
        out_ref.backward(dout.float())
        for name in inputs:
            error = relative_error(ours[name].grad, ref[name].grad)
            assert error < TOLERANCE[dtype], f"{dtype} d{name}: relative error {error:.2e}"


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=TRITON_ONLY)])
def test_conv_document_starts_list_each_rows_starts_and_count_back_to_them(backend):
    """What the conv kernels read of a packed row: each step's distance back to the last start at or before it,
    clamped to 3 (3 before the row's first start, whose outputs read the conv state), each row's start steps in
    increasing order and their count, and per 128-step tile the starts from 2 steps before it to its end (the
    forward's) and from 7 before it to 3 after its end (the backward's): how many, and the first's index."""
    from modeling_apriel_h1.ops.triton_kernels.conv_document_starts import conv_document_starts

    starts = conv_edge_starts()
    expected = torch.full(starts.shape, 3, dtype=torch.uint8)
    for row, positions in enumerate(CONV_EDGE_STARTS):
        for start, end in zip(positions, [*positions[1:], CONV_EDGE_LENGTH]):
            expected[row, start:end] = torch.arange(end - start).clamp(max=3).to(torch.uint8)
    document = conv_document_starts(starts)
    torch.testing.assert_close(document.since.cpu(), expected, rtol=0, atol=0)
    assert document.start_counts.tolist() == [len(positions) for positions in CONV_EDGE_STARTS]
    for row, positions in enumerate(CONV_EDGE_STARTS):
        assert document.start_positions[row, : len(positions)].tolist() == positions
        for kernel, (before, after) in enumerate([(2, 0), (7, 3)]):
            tiles = []
            for first_step in range(0, CONV_EDGE_LENGTH, 128):
                reaching = [i for i, s in enumerate(positions) if first_step - before <= s < first_step + 128 + after]
                tiles.append([len(reaching), reaching[0] if reaching else 0])
            counts_and_firsts = [entry[2 * kernel : 2 * kernel + 2] for entry in document.tile_starts[row].tolist()]
            assert [count for count, _ in counts_and_firsts] == [count for count, _ in tiles]
            assert ([first for (count, first) in counts_and_firsts if count]
                    == [first for count, first in tiles if count])


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=TRITON_ONLY)])
def test_the_conv_prepares_a_batchs_starts_once_for_all_its_layers(backend, monkeypatch):
    """Every Mamba layer of a forward gets the same starts tensor: the conv prepares it for its kernels on the
    first layer only, and again when the tensor is another one or was changed in place."""
    from modeling_apriel_h1.ops import triton_backend
    from modeling_apriel_h1.ops.triton_kernels.conv_document_starts import conv_document_starts

    prepared = []
    monkeypatch.setattr(triton_backend, "conv_document_starts",
                        lambda starts: prepared.append(starts) or conv_document_starts(starts))
    starts = conv_edge_starts()
    x = torch.randn(2, 16, CONV_EDGE_LENGTH, device=DEVICE)
    weight = torch.randn(16, 4, device=DEVICE)
    for _ in range(3):
        triton_backend.causal_conv1d(x, weight, document_starts=starts, return_final_states=False)
    assert len(prepared) == 1
    other = starts.clone()
    out, _ = triton_backend.causal_conv1d(x, weight, document_starts=other, return_final_states=False)
    assert len(prepared) == 2
    other[:, 40] = True
    changed, _ = triton_backend.causal_conv1d(x, weight, document_starts=other, return_final_states=False)
    assert len(prepared) == 3
    expected, _ = reference.causal_conv1d(x, weight, document_starts=other, return_final_states=False)
    assert relative_error(changed, expected) < TOLERANCE[torch.float32]
    assert not torch.equal(changed, out)
    with torch.inference_mode():  # inference tensors keep no version counter: kept by identity alone
        frozen = starts.clone()
        for _ in range(2):
            triton_backend.causal_conv1d(x, weight, document_starts=frozen, return_final_states=False)
    assert len(prepared) == 4
