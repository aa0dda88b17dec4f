"""The method on a real pretrained LLM, on the CPU: SmolLM2-135M-Instruct (30 layers) imported from its GGUF.

With 0 Mamba layers the conversion computes the teacher's logits; ranked by leave-one-out on real text and
converted with 15 of 30 layers Mamba, it greedy-decodes the same tokens through ``generate()`` and the decode
engine; a few reverse-KL distillation steps on real text bring it closer to the teacher. Sizes are kept small
(the whole module runs in about a minute on two cores): the point is that every step works on a real model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from conversion import convert_model
from conversion.convert import main as convert_main
from conversion.gguf import PROVENANCE_FILE, file_sha256, import_gguf, smollm2_gguf
from modeling_apriel_h1.engine.decoding import DecodeEngine
from modeling_apriel_h1.engine.engine_generate import engine_generate
from recipes.distill_stage import run_stage
from recipes.importance.__main__ import main as importance_main
from recipes.importance.scoring import head_weights, row_sums, text_data
from recipes.training.kd_loss import final_hidden_states
from recipes.training.stage_config import load_stage_config

from .conftest import real_paragraphs, write_chat_rows, write_text_file

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NUM_LAYERS = 30
HALF = 15
NEW_TOKENS = 12
CHAT = [{"role": "user", "content": "What does the Python statement 'assert' do? Answer in one sentence."}]
# Disjoint slices of the real text: ranking, distillation, held-out scoring.
LOO_TEXTS, TRAIN_TEXTS, HELD_OUT_TEXTS = slice(0, 2), slice(10, 26), slice(40, 44)


def chat_prompt(tokenizer) -> torch.Tensor:
    text = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")  # the shipped ChatML template, with its system turn
    return tokenizer(text, return_tensors="pt").input_ids


@pytest.fixture(scope="module")
def teacher(smollm2_dir):
    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def half_mamba_dir(smollm2_dir, tmp_path_factory) -> Path:
    """The README's steps 1-2: LOO on real text (2 documents of 64 tokens), then 15 of 30 layers converted."""
    work = tmp_path_factory.mktemp("half")
    text = write_text_file(work / "text.txt", real_paragraphs()[LOO_TEXTS])
    ranking = work / "loo.json"
    assert importance_main([
        "loo", str(smollm2_dir), "--output", str(ranking), "--text", str(text), "--max-length", "64",
        "--dtype", "float32", "--device", "cpu", "--no-progress",
    ]) == 0
    assert convert_main([
        "--teacher", str(smollm2_dir), "--output", str(work / "student"), "--num-mamba-layers", str(HALF),
        "--importance", str(ranking), "--no-progress",
    ]) == 0
    return work / "student"


def test_the_import_is_a_plain_checkpoint_that_records_its_gguf(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["rms_norm_eps"] == 1e-05  # the GGUF holds float32 9.999999747e-06
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (NUM_LAYERS, 576, 49152)
    assert (smollm2_dir / "chat_template.jinja").is_file() and (smollm2_dir / "generation_config.json").is_file()
    provenance = json.loads((smollm2_dir / PROVENANCE_FILE).read_text())
    source = smollm2_gguf()
    assert provenance["sha256"] == file_sha256(source) and provenance["size_bytes"] == source.stat().st_size
    assert (provenance["gguf_file"], provenance["quantization"], provenance["dtype"]) == (source.name, "Q4_1", "float32")
    weights = smollm2_dir / "model.safetensors"
    written = weights.stat().st_mtime_ns
    assert import_gguf(source, smollm2_dir) == smollm2_dir  # a rerun finds the import done and leaves it
    assert weights.stat().st_mtime_ns == written


def test_the_tokenizer_ends_and_pads_with_the_tokens_the_file_names(smollm2_dir):
    """The file says end of sequence and padding are <|im_end|> (id 2): a chat turn's end, where generation stops."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|im_end|>", 2)
    assert (tokenizer.bos_token, tokenizer.unk_token) == ("<|im_start|>", "<|endoftext|>")


def test_the_weights_are_the_files_values_dequantized(smollm2_dir):
    """Checked against the gguf package's own dequantizer, on tensors llama.cpp stores unpermuted."""
    from gguf.quants import dequantize
    from transformers.integrations.gguf import GgufHeader

    header = GgufHeader.from_file(str(smollm2_gguf()))
    blob = np.memmap(header.path, mode="r", dtype=np.uint8)
    names = {
        "token_embd.weight": "model.embed_tokens.weight",
        "blk.0.attn_v.weight": "model.layers.0.self_attn.v_proj.weight",
        "blk.29.ffn_down.weight": "model.layers.29.mlp.down_proj.weight",
        "output_norm.weight": "model.norm.weight",
    }
    tensors = {info.name: info for info in header.tensors}
    with safe_open(smollm2_dir / "model.safetensors", "pt") as written:
        for gguf_name, name in names.items():
            info = tensors[gguf_name]
            start = header.data_start + info.offset
            raw = blob[start : start + info.nbytes]
            if info.ggml_type == 0:  # F32
                raw = raw.view(np.float32)
            expected = torch.from_numpy(np.asarray(dequantize(raw, info.ggml_type)).reshape(info.shape).copy())
            torch.testing.assert_close(written.get_tensor(name), expected.float(), rtol=0, atol=0, msg=name)


def test_zero_mamba_layers_give_the_teachers_logits_on_a_chat_prompt(teacher, tokenizer):
    student = convert_model(teacher, [])
    input_ids = chat_prompt(tokenizer)
    with torch.no_grad():
        expected, got = teacher(input_ids).logits, student(input_ids).logits
    assert expected.dtype == got.dtype == torch.float32
    assert (got - expected).abs().max().item() <= 1e-5


def test_half_mamba_by_loo_decodes_the_same_tokens_through_generate_and_the_engine(half_mamba_dir, tokenizer):
    student = AutoModelForCausalLM.from_pretrained(half_mamba_dir, dtype=torch.float32).eval()
    ranking = json.loads((half_mamba_dir.parent / "loo.json").read_text())["ranking"]
    assert student.config.mamba_layer_indices == sorted(ranking[:HALF])  # the 15 layers LOO found least important
    input_ids = chat_prompt(tokenizer)
    # The attention mask is given: SmolLM2's pad token is its <|im_end|>, which generate() would otherwise mask out
    # of the prompt wherever a chat turn ends.
    settings = dict(attention_mask=torch.ones_like(input_ids), max_new_tokens=NEW_TOKENS, do_sample=False,
                    eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
    reference = student.generate(input_ids, **settings)[0, input_ids.shape[1]:].tolist()
    through_generate = student.generate(input_ids, custom_generate=engine_generate, **settings)
    engine = DecodeEngine(student, max_batch_size=1, max_seq_len=input_ids.shape[1] + NEW_TOKENS)
    assert len(reference) == NEW_TOKENS
    assert through_generate[0, input_ids.shape[1]:].tolist() == reference
    assert engine.generate_batch([input_ids[0].tolist()], max_new_tokens=NEW_TOKENS) == [reference]


def reverse_kl_to_teacher(student, teacher, tokenizer, texts: list[str]) -> float:
    """Mean per-token KL(student || teacher) on ``texts`` (64 tokens each), the distillation loss."""
    (batch,) = text_data(texts, tokenizer, "kl", batch_size=len(texts), max_length=64).batches
    with torch.no_grad():
        reference = (final_hidden_states(teacher, batch), head_weights(teacher))
        sums = row_sums(final_hidden_states(student, batch), head_weights(student), batch["labels"], reference)
    return float(sums.kl.sum() / sums.tokens.sum())


def test_a_few_distillation_steps_on_real_text_lower_the_kl_to_the_teacher(half_mamba_dir, smollm2_dir, teacher,
                                                                          tokenizer, tmp_path):
    paragraphs = real_paragraphs()
    data = write_chat_rows(tmp_path / "train.jsonl", paragraphs[TRAIN_TEXTS])
    config = load_stage_config(REPO / "recipes" / "configs" / "distill_tiny.yaml", [
        f"teacher={smollm2_dir}", f"student={half_mamba_dir}", f"output_dir={tmp_path / 'run'}", f"data={data}",
        "eval_examples=0", "max_seq_length=64", "per_device_batch_size=2", "max_steps=4", "warmup_steps=0",
        "learning_rate=1.0e-4", "logging_steps=1", "save_steps=1000",
    ])
    held_out = paragraphs[HELD_OUT_TEXTS]
    before = AutoModelForCausalLM.from_pretrained(half_mamba_dir, dtype=torch.float32).eval()
    kl_before = reverse_kl_to_teacher(before, teacher, tokenizer, held_out)
    trainer = run_stage(config, resume=False)
    kl_after = reverse_kl_to_teacher(trainer.model.eval(), teacher, tokenizer, held_out)
    assert trainer.state.global_step == 4
    assert kl_after < 0.9 * kl_before, (kl_before, kl_after)
