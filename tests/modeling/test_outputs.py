"""What a forward returns, as transformers models return it: recorded hidden states and attention weights
(argument or config, in forward and in generate), and tuples under ``return_dict=False``."""

from __future__ import annotations

import torch
from transformers import MistralForCausalLM

from modeling_apriel_h1 import AprielH1Config, AprielH1ForCausalLM

from .tiny import MIXED, tiny_config, tiny_mistral_config

ATTENTION_LAYERS = [i for i, kind in enumerate(MIXED) if kind == "attention"]


def _model(attn_implementation: str = "eager", seed: int = 0, **overrides) -> AprielH1ForCausalLM:
    torch.manual_seed(seed)
    model = AprielH1ForCausalLM(tiny_config(**overrides)).eval()
    model.set_attn_implementation(attn_implementation)
    return model


def _left_padded() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 97, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0
    return ids, mask


def test_output_attentions_returns_one_tensor_per_attention_layer():
    model = _model()
    ids, mask = _left_padded()
    with torch.no_grad():
        attentions = model(ids, attention_mask=mask, output_attentions=True).attentions
    assert len(attentions) == len(ATTENTION_LAYERS) == 2  # Mamba layers have no attention weights
    for weights in attentions:
        assert weights.shape == (2, 4, 9, 9)  # (batch, heads, queries, keys)
        real_queries = [weights[0, :, 3:, 3:], weights[1]]  # padding queries' rows are not defined
        for rows in real_queries:
            torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[:-1]))
            assert torch.all(rows.triu(diagonal=1) == 0)  # causal
        assert torch.all(weights[0, :, 3:, :3] == 0)  # real tokens never attend to the padding


def test_eager_attention_weights_equal_mistral_for_an_all_attention_model():
    """Same weights as transformers' Mistral: the recorded weights are the ones the layers computed."""
    torch.manual_seed(0)
    mistral = MistralForCausalLM(tiny_mistral_config()).eval()
    hybrid = AprielH1ForCausalLM(AprielH1Config(**tiny_mistral_config().to_dict())).eval()
    hybrid.load_state_dict(mistral.state_dict(), strict=True)
    for model in (mistral, hybrid):
        model.set_attn_implementation("eager")
    ids, mask = _left_padded()
    with torch.no_grad():
        expected = mistral(ids, attention_mask=mask, output_attentions=True).attentions
        got = hybrid(ids, attention_mask=mask, output_attentions=True).attentions
    assert len(got) == len(expected) == 4
    for ours, theirs in zip(got, expected):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_output_attentions_from_the_config():
    model = _model(output_attentions=True)
    with torch.no_grad():
        outputs = model(torch.randint(3, 97, (1, 6)))
    assert len(outputs.attentions) == 2 and outputs.attentions[0].shape == (1, 4, 6, 6)
    assert _model()(torch.randint(3, 97, (1, 6))).attentions is None  # nothing recorded unless asked


def test_eager_and_sdpa_give_the_same_outputs():
    ids, mask = _left_padded()
    outputs = {}
    for implementation in ("eager", "sdpa"):
        with torch.no_grad():
            outputs[implementation] = _model(implementation)(ids, attention_mask=mask, output_hidden_states=True)
    eager, sdpa = outputs["eager"], outputs["sdpa"]
    real = mask.bool()  # padded positions' outputs are not defined the same way by both
    torch.testing.assert_close(eager.logits[real], sdpa.logits[real], rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(eager.hidden_states, sdpa.hidden_states, strict=True):
        torch.testing.assert_close(ours[real], theirs[real], rtol=1e-5, atol=1e-5)


def test_hidden_states_are_each_layer_input_then_the_normed_output():
    """Checked against the layers called one by one: entry i is layer i's input, the last is after the norm."""
    model = _model("sdpa")
    ids = torch.randint(3, 97, (2, 7))
    with torch.no_grad():
        outputs = model(ids, output_hidden_states=True)
        hidden = outputs.hidden_states
        decoder = model.model
        position_embeddings = decoder.rotary_emb(hidden[0], position_ids=torch.arange(7)[None])
        assert len(hidden) == len(decoder.layers) + 1
        torch.testing.assert_close(hidden[0], decoder.embed_tokens(ids), rtol=0, atol=0)
        state = hidden[0]
        for index, layer in enumerate(decoder.layers):
            state = layer(state, position_embeddings=position_embeddings)  # no mask: causal, no padding
            if index + 1 < len(decoder.layers):
                torch.testing.assert_close(hidden[index + 1], state, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(hidden[-1], decoder.norm(state), rtol=1e-5, atol=1e-6)
        assert torch.equal(hidden[-1], decoder(ids).last_hidden_state)


def test_return_dict_false_returns_tuples():
    model = _model("sdpa")
    ids = torch.randint(3, 97, (2, 6))
    with torch.no_grad():
        as_dict = model(ids, labels=ids, use_cache=False)
        loss, logits = model(ids, labels=ids, use_cache=False, return_dict=False)
        (last_hidden,) = model.model(ids, use_cache=False, return_dict=False)
        with_cache = model(ids, return_dict=False)
    assert torch.equal(loss, as_dict.loss) and torch.equal(logits, as_dict.logits)
    assert torch.equal(last_hidden, model.model(ids).last_hidden_state)
    assert len(with_cache) == 2 and torch.equal(with_cache[0], as_dict.logits)  # (logits, cache)
    assert with_cache[1].get_seq_length() == 6


def test_return_dict_false_in_the_config_returns_tuples():
    model = _model("sdpa", return_dict=False)
    ids = torch.randint(3, 97, (1, 5))
    with torch.no_grad():
        outputs = model(ids, use_cache=False)
        explicit = model(ids, use_cache=False, return_dict=True)
    assert isinstance(outputs, tuple) and len(outputs) == 1 and torch.equal(outputs[0], explicit.logits)


def test_generate_records_every_steps_attentions_as_a_full_forward_computes_them():
    model = _model()
    prompt = torch.randint(3, 97, (2, 5))
    new_tokens = 4
    with torch.no_grad():
        out = model.generate(
            prompt, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None,
            output_attentions=True, output_hidden_states=True, return_dict_in_generate=True,
        )
        full = model(out.sequences[:, :-1], output_attentions=True).attentions  # (batch, heads, 8, 8) each
    assert len(out.attentions) == len(out.hidden_states) == new_tokens
    for step, per_layer in enumerate(out.attentions):
        assert len(per_layer) == len(ATTENTION_LAYERS)
        queries = slice(0, 5) if step == 0 else slice(4 + step, 5 + step)  # the prompt, then one new token
        for cached, recomputed in zip(per_layer, full):
            keys = queries.stop
            assert cached.shape == (2, 4, queries.stop - queries.start, keys)
            torch.testing.assert_close(cached, recomputed[:, :, queries, :keys], rtol=1e-4, atol=1e-6)
