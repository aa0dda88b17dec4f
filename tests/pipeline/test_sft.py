"""The SFT pass fine-tunes a hybrid with TRL on the bundled traces and records what it did."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from modeling_apriel_h1 import AprielH1Config, AprielH1ForCausalLM
from recipes.sft import SFTRecipe, load_recipe, run_sft
from recipes.tiny_teacher import build_tokenizer
from recipes.training.checkpoints import STATE_FILE, read_checkpoint_state


@pytest.fixture
def tiny_hybrid_dir(tmp_path):
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = AprielH1Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, layer_types=["mamba", "attention"], mamba_d_state=8,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    AprielH1ForCausalLM(config).save_pretrained(tmp_path / "hybrid")
    tokenizer.save_pretrained(tmp_path / "hybrid")
    return tmp_path / "hybrid"


def test_sft_lowers_the_loss_and_writes_a_loadable_model_with_its_record(tiny_hybrid_dir, tmp_path):
    recipe = SFTRecipe(
        model=str(tiny_hybrid_dir), output_dir=str(tmp_path / "sft"), synthetic_examples=32, max_seq_length=128,
        learning_rate=3e-3, warmup_steps=0, max_steps=10, per_device_train_batch_size=4, save_steps=5,
        logging_steps=1,
    )
    record = run_sft(recipe)
    final = tmp_path / "sft" / "final"
    assert json.loads((final / "sft.json").read_text())["steps"] == 10 == record["steps"]
    assert record["tokens"] > 0
    history = json.loads((tmp_path / "sft" / "checkpoints" / "checkpoint-10" / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in history["log_history"] if "loss" in entry]
    assert losses[-1] < losses[0] - 0.5
    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.config.layer_types == ["linear_attention", "full_attention"]


def test_sft_resumes_from_the_newest_complete_checkpoint(tiny_hybrid_dir, tmp_path):
    recipe = SFTRecipe(
        model=str(tiny_hybrid_dir), output_dir=str(tmp_path / "sft"), synthetic_examples=16, max_seq_length=128,
        max_steps=4, per_device_train_batch_size=4, save_steps=2, logging_steps=1,
    )
    run_sft(recipe)
    checkpoints = tmp_path / "sft" / "checkpoints"
    assert read_checkpoint_state(checkpoints / "checkpoint-2")["global_step"] == 2
    assert read_checkpoint_state(checkpoints / "checkpoint-4")["num_input_tokens_seen"] > 0

    (checkpoints / "checkpoint-4" / STATE_FILE).unlink()  # as if killed while saving checkpoint-4
    kept = (checkpoints / "checkpoint-2" / STATE_FILE).stat().st_mtime_ns
    record = run_sft(recipe, resume=True)
    # Resumed from checkpoint-2 (untouched), not from the unmarked checkpoint-4 (nothing left to train, so it
    # would never be marked) and not from scratch (checkpoint-2 would be written again).
    assert read_checkpoint_state(checkpoints / "checkpoint-4")["global_step"] == 4 == record["steps"]
    assert (checkpoints / "checkpoint-2" / STATE_FILE).stat().st_mtime_ns == kept


def test_sft_settings_are_validated():
    with pytest.raises(ValueError, match="unknown SFT settings \\['learning_rat'\\]"):
        load_recipe(None, {"model": "x", "learning_rat": 1.0})
    with pytest.raises(ValueError, match="no model to fine-tune"):
        load_recipe(None, {})


def test_sft_packing_feeds_the_model_rows_of_separate_conversations(tiny_hybrid_dir, tmp_path, monkeypatch):
    """``packing: true``: the hybrid gets packed rows whose position_ids restart at every conversation, so the
    Mamba layers find document starts in every training step. Its attention is not flash-attention, so the two
    rows of a step stay two rows (``recipes.training.data.PackedRowsCollator``) rather than one flat row."""
    from modeling_apriel_h1 import modeling_apriel_h1 as modeling

    found = []
    original = modeling._packed_document_starts

    def recording(*args):
        starts = original(*args)
        found.append((0, 0) if starts is None else (starts.shape[0], int(starts.sum())))
        return starts

    monkeypatch.setattr(modeling, "_packed_document_starts", recording)
    recipe = SFTRecipe(
        model=str(tiny_hybrid_dir), output_dir=str(tmp_path / "sft"), synthetic_examples=16, max_seq_length=256,
        max_steps=2, per_device_train_batch_size=2, save_steps=2, logging_steps=1, packing=True,
    )
    assert run_sft(recipe)["steps"] == 2
    assert len(found) == 2 and all(rows == 2 and count >= 1 for rows, count in found)


def test_sft_packing_mode_is_validated():
    with pytest.raises(ValueError, match="cross_document"):
        load_recipe(None, {"model": "x", "packing": "sometimes"})


def test_sft_recomputes_no_activations_unless_asked(tiny_hybrid_dir, tmp_path, monkeypatch):
    """TRL's SFTConfig turns activation checkpointing on by default: a second forward of every layer in each
    step (SFT ran 1.5x the time of a distillation step on the same batch, which also runs the teacher). The
    recipe keeps it off unless ``gradient_checkpointing`` is set, as the distillation configs do."""
    from recipes.sft import CompleteCheckpointsSFTTrainer

    seen = []
    original = CompleteCheckpointsSFTTrainer.training_step

    def recording(self, model, *args, **kwargs):
        seen.append(model.is_gradient_checkpointing)
        return original(self, model, *args, **kwargs)

    monkeypatch.setattr(CompleteCheckpointsSFTTrainer, "training_step", recording)
    for asked in (False, True):
        recipe = SFTRecipe(model=str(tiny_hybrid_dir), output_dir=str(tmp_path / f"sft-{asked}"), synthetic_examples=8,
                           max_seq_length=96, max_steps=1, per_device_train_batch_size=2, save_steps=1,
                           gradient_checkpointing=asked)
        run_sft(recipe)
    assert seen == [False, True]
    assert SFTRecipe().gradient_checkpointing is False
