"""``resolve_ops`` on a CPU machine: the reference under "auto", loud errors for what cannot run here."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

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


OPERATIONS = ("selective_scan", "selective_state_update", "causal_conv1d", "causal_conv1d_update")
BACKEND_FILES = {"triton": "triton_backend.py", "mamba_ssm": "mamba_ssm_backend.py"}


def reference_parameters(op: str, with_document_starts: bool) -> list[tuple[str, object]]:
    """(name, default or inspect.Parameter.empty) of the reference operation, in order."""
    parameters = inspect.signature(getattr(reference, op)).parameters.values()
    return [(p.name, p.default) for p in parameters if with_document_starts or p.name != "document_starts"]


def parameters_in_source(path: Path) -> tuple[dict[str, list[tuple[str, object]]], bool]:
    """Each module-level operation's (name, default) list, and SUPPORTS_DOCUMENT_STARTS, read from the source
    (a backend's packages need not be installed to check what it promises)."""
    tree = ast.parse(path.read_text())
    operations, supports_starts = {}, None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in OPERATIONS:
            names = [arg.arg for arg in node.args.posonlyargs + node.args.args]
            defaults = [inspect.Parameter.empty] * (len(names) - len(node.args.defaults))
            defaults += [ast.literal_eval(default) for default in node.args.defaults]
            operations[node.name] = list(zip(names, defaults))
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SUPPORTS_DOCUMENT_STARTS" for t in node.targets):
            supports_starts = ast.literal_eval(node.value)
    return operations, supports_starts


@pytest.mark.parametrize("backend", sorted(BACKEND_FILES))
def test_every_backend_takes_the_reference_arguments_with_its_defaults(backend):
    """A backend is a drop-in for the reference: the four operations, the same argument names in the same order,
    the same defaults (document_starts only where the backend supports it). Read from the source, so it is
    checked here without CUDA, triton or mamba-ssm."""
    operations, supports_starts = parameters_in_source(Path(reference.__file__).parent / BACKEND_FILES[backend])
    assert supports_starts is not None, "SUPPORTS_DOCUMENT_STARTS is not set"
    assert sorted(operations) == sorted(OPERATIONS)
    for op in OPERATIONS:
        assert operations[op] == reference_parameters(op, supports_starts), f"{backend}.{op}"


def test_every_backend_module_that_imports_here_has_the_reference_functions():
    """The modules resolve_ops may return expose the four operations under the reference's names and signatures."""
    from modeling_apriel_h1.ops import _load

    for name in ("reference", "triton", "mamba_ssm"):
        module = _load(name)
        if module is None:
            continue
        assert module.NAME == name
        for op in OPERATIONS:
            parameters = inspect.signature(getattr(module, op)).parameters.values()
            assert [(p.name, p.default) for p in parameters] == reference_parameters(op, module.SUPPORTS_DOCUMENT_STARTS)


def test_packed_rows_go_to_a_backend_that_restarts_at_document_starts():
    """Backends that declare document-start support take ``document_starts`` in the scan and the conv; any
    other (mamba-ssm, whose Mamba-1 scan cannot restart) hands packed rows to Triton, or the reference without
    it."""
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
