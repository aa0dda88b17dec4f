"""DeepSpeed ZeRO-3 support for models whose modules read other modules' parameters.

ZeRO-3 partitions every parameter and gathers a module's own parameters just before that module's forward.
The Mamba mixer hands ``dt_proj.weight``/``bias`` and ``conv1d.weight``/``bias`` to the scan and conv
kernels without calling ``dt_proj`` or ``conv1d``, so under ZeRO-3 those would arrive as empty shards.
DeepSpeed's remedy is to register them as external parameters of the mixer, which is what this does. The
registration only records the parameters on the module, so it may happen before or after
``deepspeed.initialize`` and is harmless without ZeRO-3.
"""

from __future__ import annotations

from accelerate import Accelerator
from torch import nn


def register_parameters_read_outside_their_module(model: nn.Module) -> int:
    """Register, for every submodule that declares ``parameters_read_outside_their_module``, those parameters
    with DeepSpeed as gathered around that submodule's forward. Returns how many were registered."""
    import deepspeed  # only under DeepSpeed; ``deepspeed.zero`` is an attribute, not an importable module

    registered = 0
    for module in model.modules():
        declared = getattr(module, "parameters_read_outside_their_module", None)
        if declared is None:
            continue
        for parameter in declared():
            deepspeed.zero.register_external_parameter(module, parameter)
            registered += 1
    return registered


def uses_zero3(accelerator: Accelerator) -> bool:
    """Whether ``accelerator`` runs DeepSpeed with stage-3 partitioning."""
    plugin = accelerator.state.deepspeed_plugin
    return plugin is not None and plugin.zero_stage == 3
