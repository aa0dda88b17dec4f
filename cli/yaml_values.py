"""YAML as a user types numbers into it: ``1e-3``, ``1E-3``, ``5e+2``, ``-.5``, ``1_000`` and ``010`` are numbers.

PyYAML reads YAML 1.1, where a float needs a dot and a signed exponent (``1.0e-3``): ``1e-3`` and ``5e+2`` come
back as strings, ``-.5`` too, while ``010`` is octal 8 and ``1:30`` is 90 (base 60). Config files and
``--set key=value`` are read with :class:`NumberLoader` instead, whose numbers are YAML 1.2's (plus the
underscores PyYAML allows): decimal integers, floats with a dot or an exponent or both, ``0x`` hex, ``.inf``,
``.nan``. Everything else (booleans, null, strings, lists, mappings) reads as ``yaml.safe_load`` reads it.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

INT_TAG = "tag:yaml.org,2002:int"
FLOAT_TAG = "tag:yaml.org,2002:float"
_INT = re.compile(r"^(?:[-+]?[0-9][0-9_]*|0x[0-9a-fA-F_]+)$")
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class NumberLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2's spellings of numbers (see the module docstring)."""


NumberLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in (INT_TAG, FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
NumberLoader.add_implicit_resolver(INT_TAG, _INT, list("-+0123456789"))
NumberLoader.add_implicit_resolver(FLOAT_TAG, _FLOAT, list("-+0123456789."))


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    return int(text, 16) if text.startswith("0x") else int(text, 10)


NumberLoader.add_constructor(INT_TAG, _construct_int)


def load_yaml(text: str) -> Any:
    """``text`` parsed as YAML with numbers spelled as users spell them; raises ``yaml.YAMLError`` as safe_load."""
    return yaml.load(text, Loader=NumberLoader)
