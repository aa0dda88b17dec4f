"""The decode engine's eager path (CPU, fp32) against the model's own ``generate()``: same greedy tokens for
hybrids and transformer teachers, left-padded batches of mixed lengths, EOS mid-batch, slots reused by
waiting prompts, and clear errors for what it cannot do."""

from __future__ import annotations

import pytest
import torch
from transformers import MistralForCausalLM

from modeling_apriel_h1 import AprielH1ForCausalLM
from modeling_apriel_h1.engine.decoding import DecodeEngine
from modeling_apriel_h1.engine.engine_generate import engine_generate
from modeling_apriel_h1.engine.sampling import SamplingParams
from tests.modeling.tiny import tiny_config, tiny_mistral_config

NEW_TOKENS = 10


@pytest.fixture(scope="module", params=["hybrid", "all-attention", "mistral"])
def model(request):
    torch.manual_seed(0)
    if request.param == "mistral":
        return MistralForCausalLM(tiny_mistral_config()).eval()
    layer_types = None if request.param == "hybrid" else ["attention"] * 4
    return AprielH1ForCausalLM(tiny_config(layer_types)).eval()


def prompts_of_lengths(*lengths: int, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 97, (n,), generator=generator).tolist() for n in lengths]


def generate_alone(model, prompt: list[int], max_new_tokens: int = NEW_TOKENS, eos: int | None = None) -> list[int]:
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


def test_more_prompts_than_slots_give_each_prompt_its_own_greedy_tokens(model):
    """Five prompts through two slots: every slot is reused, and no state leaks from one request to the next."""
    prompts = prompts_of_lengths(5, 9, 3, 12, 7)
    engine = DecodeEngine(model, max_batch_size=2, max_seq_len=64)
    assert engine.generate_batch(prompts, max_new_tokens=NEW_TOKENS) == [generate_alone(model, p) for p in prompts]


def test_a_second_call_gives_the_same_tokens(model):
    prompts = prompts_of_lengths(4, 8)
    engine = DecodeEngine(model, max_batch_size=4, max_seq_len=32)
    first = engine.generate_batch(prompts, max_new_tokens=NEW_TOKENS)
    assert engine.generate_batch(prompts, max_new_tokens=NEW_TOKENS) == first


def test_eos_stops_one_row_and_is_kept_as_its_last_token(model):
    prompts = prompts_of_lengths(6, 11)
    free_run = generate_alone(model, prompts[1])
    eos = free_run[4]
    engine = DecodeEngine(model, max_batch_size=2, max_seq_len=32)
    got = engine.generate_batch(prompts, max_new_tokens=NEW_TOKENS, eos_token_id=eos)
    assert got[1] == free_run[: free_run.index(eos) + 1]
    assert got[0] == generate_alone(model, prompts[0], eos=eos)


def test_generate_with_custom_generate_equals_generate_on_a_left_padded_batch(model):
    """The HF way in: same tensor as generate()'s own loop, padding, EOS and early stop included."""
    prompts = prompts_of_lengths(4, 9, 6)
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    eos = generate_alone(model, prompts[1])[3]
    kwargs = dict(attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=eos, pad_token_id=0)
    expected = model.generate(ids, **kwargs)
    assert torch.equal(model.generate(ids, custom_generate=engine_generate, **kwargs), expected)


def test_top_k_of_one_samples_the_greedy_tokens(model):
    prompts = prompts_of_lengths(5, 8)
    engine = DecodeEngine(model, max_batch_size=2, max_seq_len=32)
    sampled = engine.generate_batch(
        prompts, max_new_tokens=NEW_TOKENS, sampling=SamplingParams(do_sample=True, temperature=0.7, top_k=1)
    )
    assert sampled == [generate_alone(model, p) for p in prompts]


def test_stop_strings_end_a_sequence_early():
    class DigitTokenizer:
        """Decodes token ids as space-separated numbers (a stand-in tokenizer, enough to find a stop string)."""

        def decode(self, ids, skip_special_tokens=False):
            return " ".join(str(i) for i in ids) + " "

    torch.manual_seed(0)
    model = AprielH1ForCausalLM(tiny_config()).eval()
    prompt = prompts_of_lengths(7)[0]
    free_run = generate_alone(model, prompt, max_new_tokens=40)
    stop = f" {free_run[3]} "
    engine = DecodeEngine(model, max_batch_size=1, max_seq_len=64)
    got = engine.generate_batch([prompt], max_new_tokens=40, stop_strings=[stop], tokenizer=DigitTokenizer())[0]
    assert got == free_run[: len(got)]  # a prefix of the free run ...
    assert stop in DigitTokenizer().decode([0] + got) and len(got) < 40  # ... that holds the stop string, cut early


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda e: e.generate_batch([[5] * 60], max_new_tokens=10), "larger max_seq_len"),
        (lambda e: e.generate_batch([[5, 6]], max_new_tokens=0), "at least 1 new token"),
        (lambda e: e.generate_batch([[]], max_new_tokens=3), "empty"),
        (lambda e: e.generate_batch([[5]], max_new_tokens=3, stop_strings=["x"]), "tokenizer"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(call, message):
    engine = DecodeEngine(AprielH1ForCausalLM(tiny_config()).eval(), max_batch_size=2, max_seq_len=64)
    with pytest.raises(ValueError, match=message):
        call(engine)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(num_beams=2), "num_beams"),
        (dict(repetition_penalty=1.2), "RepetitionPenalty"),
        (dict(output_scores=True, return_dict_in_generate=True), "output_scores"),
        (dict(do_sample=True, temperature=0.0), "temperature"),
    ],
)
def test_generate_options_the_engine_lacks_are_refused_by_name(options, message):
    model = AprielH1ForCausalLM(tiny_config()).eval()
    with pytest.raises(ValueError, match=message):
        model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, custom_generate=engine_generate, **options)


def test_a_batch_larger_than_a_given_engine_is_refused():
    model = AprielH1ForCausalLM(tiny_config()).eval()
    engine = DecodeEngine(model, max_batch_size=1, max_seq_len=32)
    with pytest.raises(ValueError, match="slots"):
        model.generate(torch.tensor([[5, 6], [7, 8]]), max_new_tokens=3, custom_generate=engine_generate,
                       decode_engine=engine)


def test_right_padding_is_refused():
    model = AprielH1ForCausalLM(tiny_config()).eval()
    with pytest.raises(ValueError, match="left-padded"):
        model.generate(torch.tensor([[5, 6, 0], [7, 8, 9]]), attention_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]),
                       max_new_tokens=3, custom_generate=engine_generate, pad_token_id=0)


def test_sliding_window_models_are_refused():
    with pytest.raises(ValueError, match="sliding window"):
        DecodeEngine(MistralForCausalLM(tiny_mistral_config(sliding_window=16)).eval())


def test_bytes_per_sequence_counts_kv_for_attention_and_conv_plus_ssm_state_for_mamba():
    """The tiny hybrid (attention, mamba, mamba, attention; 2 KV heads of 16, mixer width 4 x 16 = 64, conv
    width 4, state 8), worked out by hand: what bytes_per_sequence says and what the state allocates per slot."""
    from modeling_apriel_h1.engine.decode_state import DecodeState, bytes_per_sequence

    model = AprielH1ForCausalLM(tiny_config()).eval()
    kv_per_attention_layer = 2 * 40 * 2 * 16 * 4  # keys and values, 40 positions, 2 heads x 16, fp32
    conv_per_mamba_layer = 64 * 4 * 4  # 64 channels x 4 taps, fp32
    ssm_per_mamba_layer = {torch.float32: 64 * 8 * 4, torch.bfloat16: 64 * 8 * 2}
    for ssm_dtype, ssm_bytes in ssm_per_mamba_layer.items():
        expected = 2 * kv_per_attention_layer + 2 * (conv_per_mamba_layer + ssm_bytes)
        assert bytes_per_sequence(model, 40, ssm_dtype) == expected
        state = DecodeState(model, slots=3, max_len=40, ssm_dtype=ssm_dtype)
        assert state.cache_bytes() == 3 * expected
        assert sorted(state.keys) == sorted(state.values) == [0, 3] and sorted(state.conv) == sorted(state.ssm) == [1, 2]
        assert state.keys[0].shape == (3, 40, 2, 16) and state.conv[1].shape == (3, 64, 4)
        assert state.ssm[2].shape == (3, 64, 8) and state.ssm[2].dtype == ssm_dtype


def test_a_bf16_mamba_state_tracks_the_fp32_state_and_halves_its_bytes():
    """``ssm_state_dtype=torch.bfloat16`` (mamba_ssm's and vLLM's choice for a bf16 model) against the default fp32
    state: the same greedy tokens here, and after the run the slots' states agree to bf16 precision."""
    from modeling_apriel_h1.engine.decode_state import bytes_per_sequence

    torch.manual_seed(0)
    model = AprielH1ForCausalLM(tiny_config()).eval()
    prompts = prompts_of_lengths(9, 14)
    engines = {dtype: DecodeEngine(model, max_batch_size=2, max_seq_len=64, ssm_state_dtype=dtype)
               for dtype in (torch.float32, torch.bfloat16)}
    tokens = {dtype: engine.generate_batch(prompts, max_new_tokens=NEW_TOKENS) for dtype, engine in engines.items()}
    assert tokens[torch.bfloat16] == tokens[torch.float32]
    reference, rounded = engines[torch.float32].state.ssm, engines[torch.bfloat16].state.ssm
    assert reference and all(rounded[index].dtype == torch.bfloat16 for index in reference)
    for index in reference:
        torch.testing.assert_close(rounded[index].float(), reference[index], rtol=2e-2, atol=1e-3)
    state_bytes = {dtype: sum(t.numel() * t.element_size() for t in engine.state.ssm.values())
                   for dtype, engine in engines.items()}
    assert state_bytes[torch.bfloat16] * 2 == state_bytes[torch.float32]
    assert bytes_per_sequence(model, 64, torch.bfloat16) < bytes_per_sequence(model, 64)


def test_an_unsupported_state_dtype_is_refused_by_name():
    with pytest.raises(ValueError, match="ssm_state_dtype"):
        DecodeEngine(AprielH1ForCausalLM(tiny_config()).eval(), ssm_state_dtype=torch.int8)
