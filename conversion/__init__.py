"""Teacher transformer -> Apriel-H1 hybrid: Mamba-in-Llama initialisation, streaming checkpoint conversion,
the conversion record and the importance-ranking file, and Fast-LLM interop."""

import modeling_apriel_h1  # noqa: F401  (registers apriel_h1 and apriel_h with the Auto classes: Apriel-H1 teachers load)

from .checkpoint import convert_checkpoint
from .importance_file import ImportanceRanking, read_importance, write_importance
from .layers import least_important_layers
from .model import convert_model
from .record import ConversionRecord, read_record, teacher_config_sha256
from .teachers import SUPPORTED_MODEL_TYPES, UnsupportedTeacherError, hybrid_config_from_teacher

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "ConversionRecord",
    "ImportanceRanking",
    "UnsupportedTeacherError",
    "convert_checkpoint",
    "convert_model",
    "hybrid_config_from_teacher",
    "least_important_layers",
    "read_importance",
    "read_record",
    "teacher_config_sha256",
    "write_importance",
]
