"""The serving engine: what this package runs to decode fast, and what a Hub user of the remote code does not get.

``DecodeEngine`` (``decoding.py``) serves many sequences at once from state allocated once (``decode_state.py``):
chunked prefill of long prompts (``chunked_prefill.py``), a prefix cache of shared prompt blocks
(``prefix_cache.py``), the projections of a layer as one matmul (``packed_linears.py``), sampling as a small
pure function (``sampling.py``), and ``generate()``'s arguments on the engine's loop (``engine_generate.py``).
Its kernels are in ``modeling_apriel_h1.ops``; the model it runs is the one in the folder above.
"""
