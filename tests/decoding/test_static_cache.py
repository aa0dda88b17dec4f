"""Stock ``generate(cache_implementation="static")`` on a hybrid: same greedy tokens as the dynamic cache, and
a decode step that compiles as one graph (``fullgraph=True``), which is what generate's auto-compile needs."""

from __future__ import annotations

import torch
from transformers import StaticCache

from modeling_apriel_h1 import AprielH1ForCausalLM
from tests.modeling.tiny import tiny_config


def left_padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    return ids.masked_fill(mask == 0, 0), mask


def test_static_cache_generates_the_dynamic_cache_tokens():
    torch.manual_seed(0)
    model = AprielH1ForCausalLM(tiny_config()).eval()
    ids, mask = left_padded_batch()
    kwargs = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    dynamic = model.generate(ids, **kwargs)
    assert torch.equal(model.generate(ids, cache_implementation="static", **kwargs), dynamic)


def test_decode_step_compiles_without_graph_breaks():
    torch.manual_seed(0)
    model = AprielH1ForCausalLM(tiny_config()).eval()
    ids = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(1))
    cache = StaticCache(config=model.config, max_cache_len=16)
    with torch.no_grad():
        prefill = model(ids, past_key_values=cache, use_cache=True)
        next_ids = prefill.logits[:, -1:].argmax(-1)
        positions = torch.full((2, 1), ids.shape[1])
        eager_cache_state = [t.clone() for t in (cache.layers[1].conv_states[0], cache.layers[1].recurrent_states[0])]
        step = torch.compile(model.forward, fullgraph=True, backend="eager")  # raises on any graph break
        compiled = step(input_ids=next_ids, past_key_values=cache, position_ids=positions, use_cache=True).logits
    # the same step, eagerly, from the same state
    torch.manual_seed(0)
    fresh = AprielH1ForCausalLM(tiny_config()).eval()
    fresh.load_state_dict(model.state_dict())
    reference_cache = StaticCache(config=fresh.config, max_cache_len=16)
    with torch.no_grad():
        fresh(ids, past_key_values=reference_cache, use_cache=True)
        assert torch.equal(reference_cache.layers[1].conv_states[0], eager_cache_state[0])
        eager = fresh(input_ids=next_ids, past_key_values=reference_cache, position_ids=positions, use_cache=True).logits
    torch.testing.assert_close(compiled, eager)
