"""Rendering conversations for distillation: labels only on assistant tokens, formats, packing, errors."""

from __future__ import annotations

import json

import datasets
import pytest

from recipes.training.data import IGNORE_INDEX, build_dataset, load_conversations, tokenize_conversation

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "2 + 3 = 5\nAnswer: 5"},
    {"role": "user", "content": "And times 4?"},
    {"role": "assistant", "content": "5 * 4 = 20\nAnswer: 20"},
]


def labelled_text(example: dict, tokenizer) -> str:
    return tokenizer.decode([label for label in example["labels"] if label != IGNORE_INDEX])


def test_only_assistant_turns_carry_labels(tokenizer):
    example = tokenize_conversation(CHAT, tokenizer, max_length=1000)
    assert len(example["labels"]) == len(example["input_ids"])
    for token, label in zip(example["input_ids"], example["labels"]):
        assert label in (token, IGNORE_INDEX)
    end = tokenizer.eos_token
    assert labelled_text(example, tokenizer) == f"2 + 3 = 5\nAnswer: 5{end}\n5 * 4 = 20\nAnswer: 20{end}\n"


def test_prompt_completion_rows_become_a_user_and_an_assistant_turn(tokenizer, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "Say hi.", "completion": "hi"}) + "\n")
    rows = load_conversations(str(path))
    example = build_dataset(rows, tokenizer, max_length=100, packing=False)[0]
    assert labelled_text(example, tokenizer) == f"hi{tokenizer.eos_token}\n"
    assert "Say hi." in tokenizer.decode(example["input_ids"])


def test_text_rows_learn_every_token_beside_chats_in_one_file(tokenizer, tmp_path):
    path = tmp_path / "mixed.jsonl"
    text = "The quick brown fox jumps over the lazy dog."
    path.write_text(json.dumps({"messages": CHAT}) + "\n" + json.dumps({"text": text}) + "\n")
    chat, plain = build_dataset(load_conversations(str(path)), tokenizer, max_length=1000, packing=False)
    assert chat == tokenize_conversation(CHAT, tokenizer, max_length=1000)
    assert plain["labels"] == plain["input_ids"]
    assert tokenizer.decode(plain["input_ids"], skip_special_tokens=True) == text
    packed = build_dataset(load_conversations(str(path)), tokenizer, max_length=1000, packing=True)
    assert len(packed) == 1 and sorted(packed[0]["seq_lengths"]) == sorted([len(chat["input_ids"]),
                                                                             len(plain["input_ids"])])


def test_rows_in_no_known_format_are_refused(tokenizer):
    rows = datasets.Dataset.from_list([{"body": "no format"}])
    with pytest.raises(ValueError, match="'text' string"):
        build_dataset(rows, tokenizer, max_length=100, packing=False)


def test_local_parquet_chat_data_loads(tokenizer, tmp_path):
    path = tmp_path / "rows.parquet"
    datasets.Dataset.from_list([{"messages": CHAT}]).to_parquet(str(path))
    example = build_dataset(load_conversations(str(path)), tokenizer, max_length=1000, packing=False)[0]
    assert example == tokenize_conversation(CHAT, tokenizer, max_length=1000)


def test_packing_fills_rows_and_keeps_every_label_on_its_token(tokenizer):
    rows = load_conversations("synthetic", synthetic_examples=40, seed=0)
    unpacked = build_dataset(rows, tokenizer, max_length=512, packing=False)
    packed = build_dataset(rows, tokenizer, max_length=512, packing=True)
    assert len(packed) < len(unpacked)
    assert all(len(row["input_ids"]) <= 512 for row in packed)
    count = lambda data: sum(sum(label != IGNORE_INDEX for label in row["labels"]) for row in data)  # noqa: E731
    assert count(packed) == count(unpacked)
    for row in packed:
        assert all(label in (token, IGNORE_INDEX) for token, label in zip(row["input_ids"], row["labels"]))


def test_an_empty_data_set_is_refused(tokenizer):
    with pytest.raises(ValueError, match="The training data set is empty"):
        build_dataset(datasets.Dataset.from_list([]), tokenizer, max_length=100, packing=False)


def test_data_without_assistant_tokens_is_refused(tokenizer):
    rows = datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "Hello?"}]}])
    with pytest.raises(ValueError, match="has an assistant token"):
        build_dataset(rows, tokenizer, max_length=100, packing=False)


