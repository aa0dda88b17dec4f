"""The Mamba mixer declares every parameter it reads without calling the owning module (what ZeRO-3 must gather).

DeepSpeed ZeRO-3 gathers a module's parameters only around that module's own forward, so a parameter the
mixer hands straight to a kernel must be declared (``parameters_read_outside_their_module``) and registered
with DeepSpeed (``recipes.training.zero3.register_for_zero3``). These tests run the mixer, watch which submodules' forwards actually
run, and require the parameters of all the others to be declared, for prefill and for the decode step.
"""

from __future__ import annotations

import torch

from modeling_apriel_h1 import AprielH1ForCausalLM
from modeling_apriel_h1.modeling_apriel_h1 import AprielH1Mamba
from tests.modeling.tiny import tiny_config


def undeclared_parameters_of_skipped_modules(model: AprielH1ForCausalLM, run) -> set[str]:
    called: set[int] = set()
    handles = [module.register_forward_pre_hook(lambda module, args: called.add(id(module)))
               for module in model.modules()]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    missing = set()
    for mixer_name, mixer in model.named_modules():
        if not isinstance(mixer, AprielH1Mamba):
            continue
        declared = {id(param) for param in mixer.parameters_read_outside_their_module()}
        for child_name, child in mixer.named_modules():
            if child is mixer or id(child) in called:
                continue
            missing |= {f"{mixer_name}.{child_name}.{name}" for name, param in child.named_parameters()
                        if id(param) not in declared}
    return missing


def test_prefill_reads_only_called_or_declared_parameters():
    model = AprielH1ForCausalLM(tiny_config()).eval()
    input_ids = torch.randint(3, 97, (2, 9))
    assert undeclared_parameters_of_skipped_modules(model, lambda: model(input_ids)) == set()


def test_decode_step_reads_only_called_or_declared_parameters():
    model = AprielH1ForCausalLM(tiny_config()).eval()
    input_ids = torch.randint(3, 97, (1, 5))
    run = lambda: model.generate(input_ids, max_new_tokens=3, do_sample=False)  # noqa: E731
    assert undeclared_parameters_of_skipped_modules(model, run) == set()


def test_declared_parameters_belong_to_the_mixer():
    mixer = AprielH1ForCausalLM(tiny_config()).model.layers[1].mixer
    own = {id(param) for param in mixer.parameters()}
    declared = mixer.parameters_read_outside_their_module()
    assert declared and all(id(param) in own for param in declared)
