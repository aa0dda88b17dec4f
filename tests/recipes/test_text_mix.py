"""Real text mixed into the task data (text_data / text_share): the share of tokens it reaches, how each row is
learned, the held-out text kept out of the python_docs corpus, the refusal of bad settings, and a stage that mixes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from recipes.distill_stage import DATA_RECORD_FILE, FINAL_DIR, run_stage
from recipes.distill_stage import main as distill_main
from recipes.sft import main as sft_main
from recipes.tiny_teacher import build_tokenizer
from recipes.training.data import IGNORE_INDEX, build_dataset, load_conversations
from recipes.training.real_text import OVERLAP_WORDS, held_out_real_text, training_documents
from recipes.training.stage_config import load_stage_config
from recipes.training.text_mix import mix_in_text

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "recipes" / "configs" / "distill_tiny.yaml"
MAX_LENGTH = 192
WORDS = "the model reads a long line of plain words and learns every one of them in order here".split()


def text_file(path: Path, paragraphs: int = 60, seed: int = 0) -> Path:
    """A .txt corpus: paragraphs of words, separated by blank lines."""
    generator = random.Random(seed)
    path.write_text("\n\n".join(" ".join(generator.choices(WORDS, k=generator.randint(20, 120)))
                                for _ in range(paragraphs)))
    return path


def is_text(row: dict) -> bool:
    return row["labels"] == row["input_ids"]


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5])
def test_the_mixed_data_reaches_the_asked_share_of_text_tokens(tmp_path, share):
    tokenizer = build_tokenizer()
    rows = load_conversations("synthetic", synthetic_examples=120, seed=0)
    mixed, record = mix_in_text(rows, tokenizer, MAX_LENGTH, str(text_file(tmp_path / "corpus.txt")), share, seed=0)
    built = build_dataset(mixed, tokenizer, MAX_LENGTH, packing=False)
    text_tokens = sum(len(row["input_ids"]) for row in built if is_text(row))
    achieved = text_tokens / sum(len(row["input_ids"]) for row in built)
    assert abs(achieved - share) < 0.05, achieved
    assert abs(record["text_share_of_tokens"] - share) < 0.05
    assert record["task_rows"] == 120 and record["text_rows"] == len(built) - 120 > 0


def test_text_rows_learn_every_token_and_task_rows_only_their_assistant_tokens(tmp_path):
    tokenizer = build_tokenizer()
    rows = load_conversations("synthetic", synthetic_examples=40, seed=0)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(WORDS[i:] + WORDS[:i])}) + "\n" for i in range(10)))
    mixed, _ = mix_in_text(rows, tokenizer, MAX_LENGTH, str(corpus), 0.3, seed=1)
    built = build_dataset(mixed, tokenizer, MAX_LENGTH, packing=False)
    task_rows = [row for row in built if not is_text(row)]
    # the task rows are exactly the rows built without text (labels on assistant tokens only), in another order
    alone = build_dataset(rows, tokenizer, MAX_LENGTH, packing=False)
    assert sorted(map(json.dumps, task_rows)) == sorted(map(json.dumps, alone))
    assert list(map(json.dumps, task_rows)) != list(map(json.dumps, alone))  # shuffled together with the text
    assert all(IGNORE_INDEX in row["labels"] for row in task_rows)
    texts = [tokenizer.decode(row["input_ids"], skip_special_tokens=True) for row in built if is_text(row)]
    assert texts and all(text.split()[0] in WORDS for text in texts)


@pytest.mark.parametrize("text_data, share", [(None, 0.0), ("python_docs", 0.0)])
def test_no_text_gives_exactly_the_old_rows(text_data, share):
    rows = load_conversations("synthetic", synthetic_examples=20, seed=0)
    mixed, record = mix_in_text(rows, build_tokenizer(), MAX_LENGTH, text_data, share, seed=0)
    assert mixed is rows and record is None


def test_the_python_docs_training_share_shares_no_word_run_with_the_held_out_text():
    documents, description = training_documents()
    words = held_out_real_text().text.lower().split()
    held_out = {tuple(words[i : i + OVERLAP_WORDS]) for i in range(len(words) - OVERLAP_WORDS + 1)}
    shared = [document[:80] for document in documents
              for trained in [document.lower().split()]
              if any(tuple(trained[i : i + OVERLAP_WORDS]) in held_out for i in range(len(trained) - OVERLAP_WORDS + 1))]
    assert shared == []
    assert len(documents) > 1000 and "topics of Lib/pydoc_data/topics.py" in description


@pytest.mark.parametrize("setting, problem", [
    ("text_share=1", "text_share is 1"),
    ("text_share=-0.1", "text_share is -0.1"),
    ("text_data=missing.txt", "text_data missing.txt"),
    ("text_data=corpus.csv", "text_data is 'corpus.csv'"),
])
def test_a_bad_text_setting_is_one_line_and_exit_status_2(setting, problem, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra = ["--set", "text_share=0.25"] if setting.startswith("text_data") else ["--set", "text_data=python_docs"]
    assert distill_main(["--config", str(TINY_CONFIG), "--set", setting, *extra]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {problem}") and error.count("\n") == 1 and "Traceback" not in error


def test_a_share_without_text_is_refused_by_the_stage_and_by_sft(capsys):
    assert distill_main(["--config", str(TINY_CONFIG), "--set", "text_share=0.25"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: text_share is 0.25") and "text_data is null" in error and error.count("\n") == 1
    assert sft_main(["--model", "missing", "--text-share", "0.5"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: text_share is 0.5 (from --text-share)") and "text_data is null" in error
    assert sft_main(["--model", "missing", "--text-data", "python_docs", "--text-share", "1.5"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_stage_mixes_text_into_its_training_rows_only_and_records_it(teacher_dir, student_dir, tmp_path, capsys):
    corpus = text_file(tmp_path / "corpus.txt")
    config = load_stage_config(TINY_CONFIG, [
        f"teacher={teacher_dir}", f"student={student_dir}", f"output_dir={tmp_path / 'run'}", "synthetic_examples=24",
        "eval_examples=8", "max_steps=2", "save_steps=2", "eval_steps=2", "logging_steps=1", "per_device_batch_size=2",
        f"max_seq_length={MAX_LENGTH}", f"text_data={corpus}", "text_share=0.25"])
    trainer = run_stage(config, resume=False)
    assert "text mixed in:" in capsys.readouterr().out
    assert any(is_text(row) for row in trainer.train_dataset)
    assert not any(is_text(row) for row in trainer.eval_dataset)  # the held-out rows stay task rows
    record = json.loads((tmp_path / "run" / FINAL_DIR / DATA_RECORD_FILE).read_text())
    assert record["eval_rows"] == 8 and record["text_mix"]["task_rows"] == 16
    assert record["text_mix"]["text_data"] == str(corpus) and len(record["text_mix"]["text_sha256"]) == 64
    assert trainer.state.global_step == 2
