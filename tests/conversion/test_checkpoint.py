"""Streaming conversion of checkpoint directories and the command line, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from conversion import ImportanceRanking, convert_checkpoint, convert_model, read_record, teacher_config_sha256, write_importance
from conversion.convert import main
from modeling_apriel_h1 import AprielH1ForCausalLM

from .teachers import input_ids, tiny_teacher

CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


def _save_tokenizer(directory: Path) -> None:
    vocab = {f"w{i}": i for i in range(97)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0", pad_token="w0", eos_token="w2")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A tiny Qwen2 teacher (q/k/v biases) saved in several shards, with a tokenizer and a chat template."""
    directory = tmp_path_factory.mktemp("teacher") / "qwen2"
    tiny_teacher("qwen2").save_pretrained(directory, max_shard_size="100KB")
    _save_tokenizer(directory)
    return directory


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(file, framework="pt") as handle:
            tensors.update({name: handle.get_tensor(name) for name in handle.keys()})
    return tensors


def test_streaming_conversion_writes_the_same_tensors_as_in_memory_conversion(teacher_dir, tmp_path):
    convert_checkpoint(teacher_dir, tmp_path / "out", [1, 2], seed=3, progress=False)
    assert len(list((tmp_path / "out").glob("*.safetensors"))) > 1  # sharded in, sharded out
    streamed = _tensors(tmp_path / "out")
    in_memory = convert_model(AutoModelForCausalLM.from_pretrained(teacher_dir), [1, 2], seed=3).state_dict()
    assert streamed.keys() == in_memory.keys()
    for name, tensor in in_memory.items():
        assert torch.equal(streamed[name], tensor), name


def test_same_seed_writes_byte_identical_files(teacher_dir, tmp_path):
    for name in ("a", "b"):
        convert_checkpoint(teacher_dir, tmp_path / name, [2], seed=5, progress=False)
    files = sorted(path.name for path in (tmp_path / "a").iterdir())
    assert files == sorted(path.name for path in (tmp_path / "b").iterdir())
    for file in files:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file


def test_cli_end_to_end_loads_with_auto_classes_and_carries_tokenizer_and_record(teacher_dir, tmp_path):
    output = tmp_path / "hybrid"
    assert main(["--teacher", str(teacher_dir), "--output", str(output), "--mamba-layers", "1,2", "--dtype", "bfloat16", "--seed", "4", "--no-progress"]) == 0
    model = AutoModelForCausalLM.from_pretrained(output)
    assert isinstance(model, AprielH1ForCausalLM)
    assert model.config.mamba_layer_indices == [1, 2] and model.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.isfinite(model(input_ids()).logits.float()).all()
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert tokenizer("w5 w7")["input_ids"] == [5, 7]
    assert (output / "generation_config.json").is_file()
    record = read_record(output)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    assert record.teacher == str(teacher_dir)
    assert record.teacher_config_sha256 == teacher_config_sha256(teacher.config)
    assert (record.replaced_layers, record.mamba_layers, record.init_method) == ([1, 2], [1, 2], "mil")
    assert (record.dtype, record.seed, record.package_version) == ("bfloat16", 4, "0.1.0")
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no staging left behind


def test_cli_picks_the_least_important_layers_and_counts_existing_mamba_layers(tmp_path):
    teacher_dir = tmp_path / "hybrid-teacher"
    tiny_teacher("apriel_h1").save_pretrained(teacher_dir)  # layer 1 is already Mamba
    ranking = ImportanceRanking("mmr", "hybrid-teacher", "kd_loss_after_100_steps", {0: 0.9, 2: 0.1, 3: 0.5}, [2, 3, 0])
    write_importance(tmp_path / "mmr.json", ranking)
    output = tmp_path / "out"
    argv = ["--teacher", str(teacher_dir), "--output", str(output), "--num-mamba-layers", "3", "--importance", str(tmp_path / "mmr.json"), "--no-progress"]
    assert main(argv) == 0
    record = read_record(output)
    assert (record.replaced_layers, record.mamba_layers) == ([2, 3], [1, 2, 3])
    teacher_mixer = AutoModelForCausalLM.from_pretrained(teacher_dir).model.layers[1].mixer.state_dict()
    student_mixer = AutoModelForCausalLM.from_pretrained(output).model.layers[1].mixer.state_dict()
    assert all(torch.equal(student_mixer[name], tensor) for name, tensor in teacher_mixer.items())


def test_existing_output_is_kept_without_overwrite_and_replaced_with_it(teacher_dir, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    argv = ["--teacher", str(teacher_dir), "--output", str(output), "--mamba-layers", "1", "--no-progress"]
    assert main(argv) == 2
    assert "already exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert (output / "keep.txt").read_text() == "mine"
    assert main([*argv, "--overwrite"]) == 0
    assert not (output / "keep.txt").exists() and read_record(output).replaced_layers == [1]


def test_a_failed_conversion_leaves_no_output_and_no_staging(teacher_dir, tmp_path, monkeypatch):
    import conversion.checkpoint as checkpoint

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoint, "write_record", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_checkpoint(teacher_dir, tmp_path / "out", [1], progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mamba-layers", "1,1"], "layers [1] are listed more than once"),
        (["--mamba-layers", "0,1,2,3"], "would leave no attention layer"),
        (["--mamba-layers", "7"], "layer 7 is out of range"),
        (["--num-mamba-layers", "9", "--importance", "MISSING"], "importance file MISSING does not exist"),
    ],
)
def test_cli_errors_name_the_problem(teacher_dir, tmp_path, capsys, extra, message):
    assert main(["--teacher", str(teacher_dir), "--output", str(tmp_path / "out"), "--no-progress", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_needs_importance_with_num_mamba_layers(teacher_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--teacher", str(teacher_dir), "--output", str(tmp_path / "o"), "--num-mamba-layers", "2"])
    assert "--num-mamba-layers needs --importance" in capsys.readouterr().err


def test_a_teacher_without_safetensors_is_refused(tmp_path):
    teacher = tiny_teacher("mistral")
    teacher.save_pretrained(tmp_path / "t")
    for file in (tmp_path / "t").glob("*.safetensors"):
        file.unlink()
    with pytest.raises(ValueError, match="has no weights"):
        convert_checkpoint(tmp_path / "t", tmp_path / "out", [1], progress=False)
    torch.save(teacher.state_dict(), tmp_path / "t" / "pytorch_model.bin")  # a .bin checkpoint
    with pytest.raises(FileNotFoundError, match="conversion reads safetensors checkpoints only"):
        convert_checkpoint(tmp_path / "t", tmp_path / "out", [1], progress=False)


def test_a_teacher_with_tied_embeddings_converts_to_a_tied_student(tmp_path):
    teacher = tiny_teacher("llama", tie_word_embeddings=True)
    teacher.save_pretrained(tmp_path / "t")
    convert_checkpoint(tmp_path / "t", tmp_path / "out", [], progress=False)
    assert "lm_head.weight" not in _tensors(tmp_path / "out")
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(student(input_ids()).logits, teacher(input_ids()).logits)


def test_cli_refuses_an_unsupported_architecture_naming_the_supported_ones(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=97)).save_pretrained(tmp_path / "gpt2")
    assert main(["--teacher", str(tmp_path / "gpt2"), "--output", str(tmp_path / "out"), "--mamba-layers", "1"]) == 2
    assert "model_type 'gpt2' is not supported; supported teachers are mistral, llama, qwen2, qwen3, phi3, apriel_h1" in capsys.readouterr().err


def test_converting_a_converted_model_keeps_the_lineage_back_to_the_transformer(teacher_dir, tmp_path):
    """Stage N converts stage N-1's hybrid but distils against the original teacher: the record knows both."""
    from transformers import AutoConfig

    from conversion.record import is_conversion_of

    convert_checkpoint(teacher_dir, tmp_path / "stage1", [1], progress=False)
    convert_checkpoint(tmp_path / "stage1", tmp_path / "stage2", [2], progress=False)
    first, second = read_record(tmp_path / "stage1"), read_record(tmp_path / "stage2")
    original = AutoConfig.from_pretrained(teacher_dir)
    assert first.ancestor_config_sha256s == ()
    assert second.ancestor_config_sha256s == (teacher_config_sha256(original),)
    assert is_conversion_of(second, original) and is_conversion_of(second, AutoConfig.from_pretrained(tmp_path / "stage1"))
    assert not is_conversion_of(first, AutoConfig.from_pretrained(tmp_path / "stage2"))


def test_a_released_checkpoint_converts_further_into_the_released_layout(tmp_path):
    """A released Apriel-H1 (synthetic, apriel_h) as the teacher: more layers become Mamba, the student keeps the
    released layout and its dt-bias convention, and streaming and in-memory conversion agree."""
    from modeling_apriel_h1 import AprielHConfig, AprielHForCausalLM

    from ..modeling.release_format import RELEASED, random_released_weights, write_released_dir

    weights = random_released_weights(AprielHConfig.from_dict(RELEASED))
    released = write_released_dir(tmp_path / "released", RELEASED, weights)
    convert_checkpoint(released, tmp_path / "out", [0], seed=3, progress=False)
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert isinstance(student, AprielHForCausalLM) and student.config.mamba_dt_bias_in_projection
    assert student.config.to_dict()["hybrid_block_layout"] == ["m2", "m2", "m2", "t"]
    teacher = AutoModelForCausalLM.from_pretrained(released)
    in_memory = convert_model(teacher, [0], seed=3).state_dict()
    streamed = _tensors(tmp_path / "out")
    assert streamed.keys() == in_memory.keys()
    assert all(torch.equal(streamed[name], tensor) for name, tensor in in_memory.items())
    for name, tensor in weights.items():  # the released mixers and everything outside layer 0 are kept as they are
        if not name.startswith("model.layers.0."):
            assert torch.equal(streamed[name], tensor), name
    with torch.no_grad():
        assert torch.equal(convert_model(teacher, []).eval()(input_ids()).logits, teacher.eval()(input_ids()).logits)
