"""Apriel-H1 hybrid attention/Mamba models for transformers.

Importing the package registers ``apriel_h1`` with ``AutoConfig`` and ``AutoModelForCausalLM``, and ``apriel_h``
too (the released Apriel-H1 checkpoints, which then load as they are, without their remote code), and marks the
classes for ``auto_map`` so that ``save_pretrained`` writes the modeling files beside the weights: a saved
directory then loads with ``trust_remote_code=True`` where this package is not installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_apriel_h1 import AprielH1Config, AprielHConfig
from .modeling_apriel_h1 import (
    AprielH1ForCausalLM,
    AprielH1Model,
    AprielH1PreTrainedModel,
    AprielHForCausalLM,
    AprielHModel,
)

# What ships to the Hub as remote code: the files of this folder (not of its subpackages), which import only each
# other, transformers and torch. save_pretrained copies them by following the relative imports of the two files
# auto_map names; model_cards.hub copies this list.
REMOTE_CODE_FILES = (
    "configuration_apriel_h1.py", "layer_types.py", "mamba_reference.py", "modeling_apriel_h1.py", "transformers_compat.py",
)

AutoConfig.register(AprielH1Config.model_type, AprielH1Config, exist_ok=True)
AutoModel.register(AprielH1Config, AprielH1Model, exist_ok=True)
AutoModelForCausalLM.register(AprielH1Config, AprielH1ForCausalLM, exist_ok=True)
AutoConfig.register(AprielHConfig.model_type, AprielHConfig, exist_ok=True)
AutoModel.register(AprielHConfig, AprielHModel, exist_ok=True)
AutoModelForCausalLM.register(AprielHConfig, AprielHForCausalLM, exist_ok=True)
# subclasses inherit these: AprielH* classes are saved under their own names in the same files
AprielH1Config.register_for_auto_class()
AprielH1Model.register_for_auto_class("AutoModel")
AprielH1ForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "REMOTE_CODE_FILES",
    "AprielH1Config",
    "AprielH1ForCausalLM",
    "AprielH1Model",
    "AprielH1PreTrainedModel",
    "AprielHConfig",
    "AprielHForCausalLM",
    "AprielHModel",
]
