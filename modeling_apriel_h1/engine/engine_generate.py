"""``model.generate(..., custom_generate=engine_generate)``: HF's generate() API in front of the decode engine.

transformers prepares the generation config, the logits processors and the stopping criteria as usual and then
hands them to this function instead of its own loop. It accepts what the engine does (greedy; sampling with
temperature, top-k, top-p; EOS; ``max_new_tokens``; left-padded batches) and refuses the rest with a message
that names the option, rather than silently ignoring it. The result is generate()'s: prompt + new tokens, rows
that stopped early padded with ``pad_token_id``.

A cache passed in (to continue a conversation) is accepted and not read: the engine keeps no cache between calls
and prefills the whole of ``input_ids`` into its own state, which gives the tokens generate() gives from the cache
(tests/modeling/test_cache_continuation.py), but leaves the passed cache as it was rather than extending it.

The engine is built on first use and kept on the model for later calls that fit in it; pass
``decode_engine=DecodeEngine(model, ...)`` to choose its slots and length yourself.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList

from .decoding import DecodeEngine
from .sampling import SamplingParams

_ENGINE_ATTRIBUTE = "_apriel_h1_decode_engine"
_LENGTH_ROUNDING = 256


def engine_generate(
    model,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    decode_engine: DecodeEngine | None = None,
    **model_kwargs,
) -> torch.LongTensor:
    """generate()'s decoding loop replaced by the decode engine; see the module docstring. ``model_kwargs`` are
    what generate() prepared for its own loop: the attention mask is read from them, the rest is unused."""
    _refuse_unsupported(generation_config, logits_processor, stopping_criteria, model_kwargs)
    batch, width = input_ids.shape
    max_new_tokens = generation_config.max_length - width
    prompts = _unpadded_prompts(input_ids, model_kwargs.get("attention_mask"))
    engine = decode_engine or _engine_for(model, batch, width + max_new_tokens)
    if batch > engine.max_batch_size:
        raise ValueError(
            f"the batch has {batch} prompts but the decode engine has {engine.max_batch_size} slots: build it with "
            "max_batch_size >= the batch, or use engine.generate_batch(), which queues prompts"
        )
    eos = generation_config._eos_token_tensor
    new_tokens = engine.generate_batch(
        prompts, max_new_tokens, _sampling(generation_config, logits_processor),
        eos_token_id=None if eos is None else eos.flatten().tolist(),
    )
    pad = generation_config._pad_token_tensor
    pad_id = int(pad) if pad is not None else int(eos.flatten()[0]) if eos is not None else 0
    longest = max(len(tokens) for tokens in new_tokens)
    output = torch.full((batch, width + longest), pad_id, dtype=input_ids.dtype, device=input_ids.device)
    output[:, :width] = input_ids
    for row, tokens in enumerate(new_tokens):
        output[row, width : width + len(tokens)] = torch.tensor(tokens, dtype=input_ids.dtype)
    return output


def _engine_for(model, batch: int, length: int) -> DecodeEngine:
    """The engine kept on the model if it fits this call, else a new one (kept for the next call)."""
    engine = getattr(model, _ENGINE_ATTRIBUTE, None)
    if engine is None or engine.max_batch_size < batch or engine.max_seq_len < length:
        rounded = -(-length // _LENGTH_ROUNDING) * _LENGTH_ROUNDING
        engine = DecodeEngine(model, max_batch_size=batch, max_seq_len=rounded)
        setattr(model, _ENGINE_ATTRIBUTE, engine)
    return engine


def _unpadded_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[list[int]]:
    if attention_mask is None:
        return input_ids.tolist()
    mask = attention_mask.bool()
    # left padding only: once a row's tokens start, they run to the end
    if (mask[:, :-1] & ~mask[:, 1:]).any():
        raise ValueError("the decode engine needs left-padded prompts (tokenizer.padding_side = 'left')")
    return [row[keep].tolist() for row, keep in zip(input_ids, mask)]


def _sampling(generation_config: GenerationConfig, logits_processor: LogitsProcessorList) -> SamplingParams:
    """The sampling that generate() itself would apply: read from the warpers it built."""
    if not generation_config.do_sample:
        return SamplingParams()
    values = {"do_sample": True}
    for processor in logits_processor:
        if isinstance(processor, TemperatureLogitsWarper):
            values["temperature"] = processor.temperature
        elif isinstance(processor, TopKLogitsWarper):
            values["top_k"] = processor.top_k
        elif isinstance(processor, TopPLogitsWarper):
            values["top_p"] = processor.top_p
    return SamplingParams(**values)


def _refuse_unsupported(
    generation_config: GenerationConfig,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    model_kwargs: dict,
) -> None:
    problems = []
    if generation_config.num_beams != 1:
        problems.append(f"num_beams={generation_config.num_beams} (beam search)")
    if generation_config.num_return_sequences != 1:
        problems.append(f"num_return_sequences={generation_config.num_return_sequences}")
    for flag in ("output_scores", "output_logits", "output_attentions", "output_hidden_states", "return_dict_in_generate"):
        if getattr(generation_config, flag, False):
            problems.append(f"{flag}=True")
    allowed_processors = (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)
    problems += [type(p).__name__ for p in logits_processor if not isinstance(p, allowed_processors)]
    problems += [type(c).__name__ for c in stopping_criteria if not isinstance(c, (MaxLengthCriteria, EosTokenCriteria))]
    if model_kwargs.get("inputs_embeds") is not None:
        problems.append("inputs_embeds")
    if problems:
        raise ValueError(
            f"the decode engine does not support {', '.join(problems)}; drop these options or call generate() "
            "without custom_generate"
        )
