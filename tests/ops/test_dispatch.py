"""``resolve_ops`` on a CPU machine: the reference under "auto", loud errors for what cannot run here."""

from __future__ import annotations

import pytest
import torch

from modeling_apriel_h1.ops import ENV_VAR, reference, resolve_ops

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def no_backend_override(monkeypatch):
    """Whatever the shell running the tests exported must not choose the backend for them."""
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.mark.parametrize("preference", [None, "auto", "reference"])
def test_cpu_gets_the_reference(preference):
    ops = resolve_ops(CPU, preference)
    assert ops is reference
    assert ops.NAME == "reference"


@pytest.mark.parametrize("backend,needs", [("triton", "triton"), ("mamba_ssm", "mamba-ssm")])
def test_forcing_a_gpu_backend_on_cpu_says_why_it_cannot_run(backend, needs):
    with pytest.raises(RuntimeError) as error:
        resolve_ops(CPU, backend)
    message = str(error.value)
    assert backend in message and "CUDA" in message and needs in message


def test_unknown_backend_is_a_value_error_listing_the_choices():
    with pytest.raises(ValueError, match="reference"):
        resolve_ops(CPU, "cutlass")


def test_environment_variable_overrides_the_preference(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "reference")
    assert resolve_ops(CPU, "triton") is reference
    monkeypatch.setenv(ENV_VAR, "triton")
    with pytest.raises(RuntimeError, match="triton"):
        resolve_ops(CPU, "reference")
    monkeypatch.setenv(ENV_VAR, "nonsense")
    with pytest.raises(ValueError, match=ENV_VAR):
        resolve_ops(CPU, "auto")


def test_every_backend_module_that_imports_here_has_the_reference_functions():
    """The modules resolve_ops may return expose the four operations under the reference's names."""
    from modeling_apriel_h1.ops import _load

    for name in ("reference", "triton", "mamba_ssm"):
        module = _load(name)
        if module is None:
            continue
        assert module.NAME == name
        for op in ("selective_scan", "selective_state_update", "causal_conv1d", "causal_conv1d_update"):
            assert callable(getattr(module, op)), f"{name}.{op}"


def test_packed_rows_go_to_a_backend_that_restarts_at_document_starts():
    """Backends that declare document-start support take ``document_starts`` in the scan and the conv; any
    other (mamba-ssm, whose Mamba-1 scan cannot restart) hands packed rows to Triton, or the reference without
    it."""
    import inspect
    import types

    from modeling_apriel_h1.ops import _load, backend_for_packed_rows

    for name in ("reference", "triton", "mamba_ssm"):
        module = _load(name)
        if module is None:
            continue
        supports = module.SUPPORTS_DOCUMENT_STARTS
        assert supports == (name != "mamba_ssm"), name
        if supports:
            assert backend_for_packed_rows(module) is module
            for op in ("selective_scan", "causal_conv1d"):
                assert "document_starts" in inspect.signature(getattr(module, op)).parameters, f"{name}.{op}"
    no_restarts = types.SimpleNamespace(NAME="mamba_ssm", SUPPORTS_DOCUMENT_STARTS=False)
    assert backend_for_packed_rows(no_restarts) is (_load("triton") or reference)
