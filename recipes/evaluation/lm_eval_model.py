"""lm-eval model ``apriel_h1``: lm-eval's HF model with generation served in large batches by our decoder.

Importing this module registers the name with lm-eval and ``apriel_h1`` with transformers' Auto classes, so a
saved hybrid loads with this package's classes and needs no ``trust_remote_code``. lm-eval (0.4.x) has no
plugin discovery for models defined outside its source tree (its registry is filled from a fixed table in
``lm_eval/models/__init__.py``), so the ``lm_eval`` command never imports this module on its own: run
``apriel-h1-lm-eval`` (or ``python -m recipes.lm_eval_cli``), which is ``lm_eval`` with this module imported,
or pass ``model="apriel_h1"`` to ``lm_eval.simple_evaluate`` after importing it.

* ``loglikelihood`` / ``loglikelihood_rolling``: lm-eval's ``HFLM`` unchanged (batched forwards).
* ``generate_until``: every request of one generation setting goes to the decoder at once, which keeps up to
  ``decode_batch_size`` sequences in flight (``modeling_apriel_h1.engine.decoding.DecodeEngine``, continuous
  batching; where the engine is not importable, ``model.generate`` on left-padded batches of that size). The
  prompts are encoded, truncated and the outputs cut at the stop strings exactly as ``HFLM`` does, so greedy
  results equal ``--model hf``'s.
"""

from __future__ import annotations

import json
import logging
import time

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

import modeling_apriel_h1  # noqa: F401  (registers apriel_h1 with the Auto classes: no trust_remote_code)
from cli import model_source
from modeling_apriel_h1.engine.decoding import DecodeEngine
from modeling_apriel_h1.engine.sampling import SamplingParams

eval_logger = logging.getLogger(__name__)


SAMPLING_KWARGS = ("temperature", "top_p", "top_k")


@torch.no_grad()
def generate_with_hf(
    model: PreTrainedModel,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    eos_token_id: int | list[int] | None = None,
    stop_strings: list[str] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    pad_token_id: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> list[list[int]]:
    """What ``DecodeEngine.generate_batch`` returns, from ``model.generate``: the generated ids of every prompt, in
    prompt order, without the prompt, ending before the first end-of-sequence token (the engine keeps that
    token; lm-eval decodes without special tokens, so the text is the same).

    Prompts are sorted by length (less padding) and run in left-padded batches of ``batch_size``; a row that
    produced a stop string or EOS stops growing (``generate``'s stop-string criterion).
    """
    eos_ids = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k} if do_sample else {}
    outputs: list[list[int]] = [[] for _ in prompts]
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="generate", unit="batch", disable=not progress):
        rows = [prompts[i] for i in order[start : start + batch_size]]
        width = max(len(row) for row in rows)
        ids = torch.tensor([[pad_token_id] * (width - len(row)) + row for row in rows], device=model.device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=model.device)
        generated = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
            eos_token_id=eos_token_id, pad_token_id=pad_token_id, stop_strings=stop_strings or None,
            tokenizer=tokenizer if stop_strings else None, **sampling,
        )[:, width:].tolist()
        for index, tokens in zip(order[start : start + batch_size], generated):
            end = next((t for t, token in enumerate(tokens) if token in eos_ids), len(tokens))
            outputs[index] = tokens[:end]
    return outputs


@register_model("apriel_h1")
class AprielH1LM(HFLM):
    """``HFLM`` whose ``generate_until`` hands all requests of one setting to the fast decoder at once.

    Extra model argument: ``decode_batch_size`` (sequences decoded at once; default 64). ``generation_stats``
    accumulates the generated tokens and the wall time spent generating (a speed only on a GPU).
    """

    def __init__(self, pretrained: str | PreTrainedModel, decode_batch_size: int = 64, **kwargs) -> None:
        if isinstance(pretrained, str):  # a local path is checked here, so a missing one is named as such
            model_source(pretrained, what="checkpoint", tokenizer="tokenizer" not in kwargs, hub=True)
        super().__init__(pretrained=pretrained, **kwargs)
        self.decode_batch_size = int(decode_batch_size)
        self.generation_stats = {"generated_tokens": 0, "generation_wall_s": 0.0, "decoder": None}

    def _encode_prompt(self, context: str, max_context_tokens: int) -> list[int]:
        """The prompt's ids exactly as ``HFLM.generate_until`` feeds them (special tokens, left truncation)."""
        ids, mask = self.tok_batch_encode([context], left_truncate_len=max_context_tokens, truncation=self.truncation)
        return ids[0][mask[0].bool()].tolist()

    def _eos_token_id(self) -> int | list[int]:
        """The ids ``generate`` stops at under ``--model hf``: the generation config's, else the tokenizer's."""
        configured = self.model.generation_config.eos_token_id
        return configured if configured is not None else self.eot_token_id

    def _decode(self, prompts: list[list[int]], max_new_tokens: int, stop: list[str], options: dict) -> list[list[int]]:
        unsupported = sorted(set(options) - {"do_sample", *SAMPLING_KWARGS})
        if unsupported:
            raise ValueError(
                f"generation kwargs {unsupported} are not supported by the apriel_h1 decoder "
                f"(it takes do_sample, {', '.join(SAMPLING_KWARGS)}); evaluate this task with --model hf"
            )
        do_sample = bool(options.get("do_sample", False))
        sampling = {key: options[key] for key in SAMPLING_KWARGS if options.get(key) is not None} if do_sample else {}
        common = dict(
            eos_token_id=self._eos_token_id(), stop_strings=stop, tokenizer=self.tokenizer, progress=self.rank == 0
        )
        engine = self._engine(max(len(p) for p in prompts) + max_new_tokens, len(prompts))
        if engine is not None:
            self.generation_stats["decoder"] = "DecodeEngine"
            sampling_params = SamplingParams(do_sample=do_sample, **sampling)
            return engine.generate_batch(prompts, max_new_tokens, sampling=sampling_params, **common)
        self.generation_stats["decoder"] = "generate"
        return generate_with_hf(
            self.model, prompts, max_new_tokens=max_new_tokens, do_sample=do_sample,
            pad_token_id=self.tokenizer.pad_token_id or 0, batch_size=self.decode_batch_size, **sampling, **common,
        )

    def _engine(self, max_seq_len: int, num_prompts: int) -> DecodeEngine | None:
        """A decode engine sized for this request group, or None where it cannot serve the model (a
        sliding-window teacher, a layout without ``model.layers``): then ``generate`` does."""
        try:
            return DecodeEngine(self.model, max_batch_size=min(self.decode_batch_size, num_prompts), max_seq_len=max_seq_len)
        except ValueError as error:
            eval_logger.warning("apriel_h1: decoding with model.generate, not the decode engine: %s", error)
            return None

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Group the requests by generation setting; decode each group as one batch; cut as ``HFLM`` does."""
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        results: list[str] = [""] * len(requests)
        for indices in groups.values():
            gen_kwargs = requests[indices[0]].args[1]
            options = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            until = handle_stop_sequences(options.pop("until", None), eos=eos)
            max_new_tokens = options.pop("max_gen_toks")
            if max_new_tokens >= self.max_length:
                raise ValueError(f"max_gen_toks {max_new_tokens} leaves no room for a prompt in max_length {self.max_length}")
            prompts = [self._encode_prompt(requests[i].args[0], self.max_length - max_new_tokens) for i in indices]
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            began = time.perf_counter()
            generated = self._decode(prompts, max_new_tokens, until, options)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.generation_stats["generation_wall_s"] += time.perf_counter() - began
            self.generation_stats["generated_tokens"] += sum(len(tokens) for tokens in generated)
            for index, tokens in zip(indices, generated):
                text = self._response_text(tokens, until)
                results[index] = text
                self.cache_hook.add_partial("generate_until", requests[index].args, text)
        return results

    def _response_text(self, tokens: list[int], until: list[str]) -> str:
        """Decode and cut at the stop strings and the thinking marker, as ``HFLM.generate_until`` does."""
        if isinstance(self.think_end_token, int) and self.think_end_token in tokens:
            last = len(tokens) - 1 - tokens[::-1].index(self.think_end_token)
            return postprocess_generated_text(self.tok_decode(tokens[last + 1 :]).lstrip(), until, None)
        think_end = self.think_end_token if isinstance(self.think_end_token, str) else None
        return postprocess_generated_text(self.tok_decode(tokens), until, think_end)
