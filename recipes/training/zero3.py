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


def register_for_zero3(accelerator: Accelerator, *models: nn.Module) -> None:
    """Under DeepSpeed ZeRO-3, register every parameter that a submodule declares through
    ``parameters_read_outside_their_module`` as gathered around that submodule's forward; otherwise nothing."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None or plugin.zero_stage != 3:
        return
    import deepspeed  # only under DeepSpeed; ``deepspeed.zero`` is an attribute, not an importable module

    for model in models:
        for module in model.modules():
            declared = getattr(module, "parameters_read_outside_their_module", None)
            for parameter in declared() if declared is not None else ():
                deepspeed.zero.register_external_parameter(module, parameter)
