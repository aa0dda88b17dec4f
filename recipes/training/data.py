"""Training data for distillation: load conversations, render them with the chat template, mask, pack.

Distillation follows M1 and Apriel-H1 in using SFT data: conversations whose assistant turns the student
must reproduce the teacher's distribution on. Only assistant tokens carry a label; everything else
(system, user, template markup before the reply) gets -100 so neither the KD loss nor the student's CE
counts it.

Sources, chosen by the ``data`` string:

* ``synthetic``: the bundled reasoning traces of :mod:`recipes.training.synthetic` (no download);
* a local ``.jsonl``/``.json``/``.parquet`` file or a glob of them;
* anything else is a ``datasets`` hub name passed to :func:`datasets.load_dataset`.

Rows are chat (``messages``: list of ``{role, content}``), prompt/completion (``prompt`` and ``completion``
strings, or lists of messages as TRL's conversational prompt-completion format has them), or plain text (``text``,
TRL's language-modelling format), and one file may mix them. A text row is learned on every token: mixing
ordinary text into task conversations keeps the student's general language, which distilling on task replies
alone loses (docs/study.md measures it).

Packing (the ``packing`` setting of the distillation and SFT configs):

* ``false``: one conversation per row, rows padded to the longest of the batch;
* ``true`` (or ``documents``): whole conversations packed into rows of ``max_length`` tokens by TRL's
  best-fit-decreasing packer, with ``position_ids`` restarting at 0 at every conversation (TRL's padding-free
  collator writes them). Under varlen flash-attention each micro-batch is flattened into one row without
  padding; under SDPA or eager attention the rows stay rows (``PackedRowsCollator``), because there a flat row of
  ``batch x max_length`` tokens is one dense masked attention, ``batch`` times the work of the rows apart. The
  models see each conversation alone: transformers' masks (and varlen flash-attention) keep attention inside
  it, and the Apriel-H1 Mamba layers restart their conv window and state at it (``modeling_apriel_h1``);
* ``cross_document``: the same rows without the restarts (pretraining-style): a later conversation attends to,
  and the Mamba state carries over from, the earlier ones in its row.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase
from trl import pack_dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from recipes.training.synthetic import synthetic_conversations

SYNTHETIC_SOURCE = "synthetic"
IGNORE_INDEX = -100
_LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
DOCUMENTS = "documents"  # packed rows, each conversation computed alone (what `packing: true` means)
CROSS_DOCUMENT = "cross_document"  # packed rows, one long sequence each


def packing_mode(packing: bool | str) -> str | None:
    """The ``packing`` setting as None (no packing), ``DOCUMENTS`` or ``CROSS_DOCUMENT``."""
    if packing is False:
        return None
    if packing is True or packing == DOCUMENTS:
        return DOCUMENTS
    if packing == CROSS_DOCUMENT:
        return CROSS_DOCUMENT
    raise ValueError(
        f"packing={packing!r} is not a packing mode; use false, true (= {DOCUMENTS}: packed conversations kept "
        f"apart) or {CROSS_DOCUMENT} (packed rows read as one sequence)."
    )


def load_conversations(
    source: str, split: str = "train", synthetic_examples: int = 0, seed: int = 0
) -> datasets.Dataset:
    """The raw rows of ``source`` (see the module docstring for the accepted sources)."""
    if source == SYNTHETIC_SOURCE:
        return datasets.Dataset.from_list(synthetic_conversations(synthetic_examples, seed))
    suffix = Path(source).suffix
    if suffix in _LOCAL_FORMATS:
        return datasets.load_dataset(_LOCAL_FORMATS[suffix], data_files=source, split="train")
    return datasets.load_dataset(source, split=split)


def is_text_row(row: dict) -> bool:
    """Whether ``row`` is plain text (a ``text`` string and no chat), which is learned on every token."""
    return bool(row.get("text")) and not row.get("messages") and row.get("prompt") is None


def to_messages(row: dict) -> list[dict[str, str]]:
    """A chat or prompt/completion row as one chat."""
    if "messages" in row and row["messages"]:
        return list(row["messages"])
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        completion = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else list(completion)
        return prompt + completion
    raise ValueError(
        f"A data row has neither a 'messages' list, 'prompt'/'completion' fields nor a 'text' string (its keys: "
        f"{sorted(row)}). Convert the data to one of these formats."
    )


def render_with_assistant_spans(
    messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase
) -> tuple[str, list[tuple[int, int]]]:
    """The chat rendered with the tokenizer's template, and the character spans of the assistant turns.

    Each assistant turn spans from the end of the conversation rendered up to it *with* the generation
    prompt to the end of the conversation rendered through it, so the span holds exactly what the model
    generates: the reply and the template's end-of-turn markup.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
        if not (text.startswith(through) and through.startswith(before)):
            raise ValueError(
                "The tokenizer's chat template renders earlier turns differently once later turns are added "
                "(it is not prefix-preserving), so assistant tokens cannot be located. Use a template that "
                "renders each turn the same whatever follows it, or one assistant turn per row."
            )
        spans.append((len(before), len(through)))
    return text, spans


def tokenize_conversation(
    messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> dict[str, list[int]]:
    """``input_ids``/``attention_mask``/``labels`` of one chat, truncated to ``max_length``; labels -100
    everywhere but on tokens that start inside an assistant turn."""
    text, spans = render_with_assistant_spans(messages, tokenizer)
    encoding = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=max_length
    )
    labels = [
        token if any(start <= offset < end for start, end in spans) else IGNORE_INDEX
        for token, (offset, _) in zip(encoding["input_ids"], encoding["offset_mapping"])
    ]
    return {"input_ids": encoding["input_ids"], "attention_mask": encoding["attention_mask"], "labels": labels}


def tokenize_text(text: str, tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict[str, list[int]]:
    """``input_ids``/``attention_mask``/``labels`` of plain text, truncated to ``max_length``; every token is a
    label (the tokenizer's own special tokens, if it adds any, included)."""
    encoding = tokenizer(text, truncation=True, max_length=max_length)
    return {"input_ids": encoding["input_ids"], "attention_mask": encoding["attention_mask"],
            "labels": list(encoding["input_ids"])}


def tokenize_row(row: dict, tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict[str, list[int]]:
    """One data row of any accepted format, tokenized and labelled."""
    if is_text_row(row):
        return tokenize_text(row["text"], tokenizer, max_length)
    return tokenize_conversation(to_messages(row), tokenizer, max_length)


def build_dataset(
    rows: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int, packing: bool | str
) -> datasets.Dataset:
    """Tokenized, masked (and optionally packed) training rows.

    Rows left with no assistant token (e.g. truncated before the reply) are dropped. Packing (see the module
    docstring for the modes) uses TRL's best-fit-decreasing packer: whole conversations share a row of
    ``max_length`` tokens. In ``documents`` mode the rows keep TRL's ``seq_lengths`` column, from which
    :func:`training_collator` writes the restarting ``position_ids``.
    """
    mode = packing_mode(packing)
    if len(rows) == 0:
        raise ValueError("The training data set is empty. Point `data` at a file or data set with rows in it.")
    tokenized = rows.map(
        lambda row: tokenize_row(row, tokenizer, max_length),
        remove_columns=rows.column_names,
        desc="Tokenizing rows",
    )
    tokenized = tokenized.filter(lambda row: any(label != IGNORE_INDEX for label in row["labels"]))
    if len(tokenized) == 0:
        raise ValueError(
            f"None of the {len(rows)} rows has an assistant token within max_seq_length={max_length}, "
            "so there is nothing to distill. Check that the rows have assistant turns, or raise max_seq_length."
        )
    if mode is not None:
        tokenized = pack_dataset(tokenized, seq_length=max_length, strategy="bfd")
    if mode == CROSS_DOCUMENT:
        tokenized = tokenized.remove_columns("seq_lengths")
    return tokenized


class PackedRowsCollator:
    """Packed rows as a batch of rows, conversations kept apart, for attention without varlen kernels.

    Each row is collated alone by TRL's padding-free collator (``position_ids`` restarting at each conversation,
    the first token of each unlabelled), then padded to the batch's longest row with a trailing run of pad
    tokens that is a document of its own (its ``position_ids`` restart at 0, its labels are -100). So no
    attention mask is needed, and transformers' masks and the Mamba layers treat the padding as one more
    document that nothing reads and no loss counts.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.row_collator = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        rows = [self.row_collator([example]) for example in examples]
        longest = max(row["input_ids"].shape[1] for row in rows)
        batch = {"input_ids": [], "labels": [], "position_ids": []}
        for row in rows:
            tail = longest - row["input_ids"].shape[1]
            batch["input_ids"].append(F.pad(row["input_ids"][0], (0, tail), value=self.pad_token_id))
            batch["labels"].append(F.pad(row["labels"][0], (0, tail), value=IGNORE_INDEX))
            batch["position_ids"].append(torch.cat([row["position_ids"][0], torch.arange(tail)]))
        return {key: torch.stack(values) for key, values in batch.items()}


def flattens_packed_rows(attn_implementation: str | None) -> bool:
    """Whether packed rows should be flattened into one row per micro-batch: only where attention is
    varlen flash-attention, which computes each conversation alone however long the flat row is."""
    return attn_implementation is not None and "flash" in attn_implementation


def training_collator(tokenizer: PreTrainedTokenizerBase, packing: bool | str, flatten_rows: bool = True):
    """The collator for rows from :func:`build_dataset` with the same ``packing``. For ``documents``: TRL's
    padding-free collator when ``flatten_rows`` (one flat row per micro-batch, ``position_ids`` restarting at
    each conversation, no attention mask, so that transformers' masks separate the conversations), else
    :class:`PackedRowsCollator` (the same rows kept apart; see :func:`flattens_packed_rows`). Otherwise padding
    to the batch's longest row."""
    if packing_mode(packing) == DOCUMENTS:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if flatten_rows:
            return DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=True)
        return PackedRowsCollator(pad)
    return DataCollatorForSeq2Seq(tokenizer, padding=True)
