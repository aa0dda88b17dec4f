"""Leave-one-out importance: ranks built-to-differ layers correctly, restores the model, fails clearly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from recipes.importance.__main__ import main
from recipes.importance.layers import skip_layer
from recipes.importance.loo import leave_one_out
from recipes.importance.ranking import read_ranking
from recipes.importance.scoring import check_metric, choice_data, load_choice_questions, load_texts, text_data
from modeling_apriel_h1 import AprielH1Config, AprielH1ForCausalLM
from tests.importance.tiny import ESSENTIAL, HARMLESS, layered_mistral, tokenizer

QUESTIONS = [
    {"question": "What is 2 + 3?", "choices": ["5", "7", "23", "1"], "answer": 0},
    {"question": "Which is a colour?", "choices": ["dog", "blue", "run"], "answer": 1},
    {"question": "Who is the tallest?", "choices": ["Alice", "Bob"], "answer": 1},
    {"question": "Is true and false true?", "choices": ["True", "False"], "answer": 1},
]


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return layered_mistral(tok)


@pytest.fixture(scope="module")
def texts():
    return load_texts(None, num_synthetic=8)[0]


@pytest.mark.parametrize("metric", ["kl", "loss"])
def test_loo_ranks_harmless_layer_least_and_essential_layer_most_important(model, tok, texts, metric):
    data = text_data(texts, tok, metric, batch_size=4, max_length=96)
    result = leave_one_out(model, data, progress=False)
    ranking = sorted(result.importance, key=result.importance.get)
    assert result.importance[HARMLESS] == pytest.approx(0.0, abs=1e-6)
    assert ranking[-1] == ESSENTIAL
    if metric == "kl":  # a KL is never negative; removing a layer of a random model may lower its loss
        assert ranking[0] == HARMLESS


def own_picks(model, tok, questions: list[dict]) -> list[int]:
    """The choice the model finds most likely for each question, from its full logits (not the chunked scoring
    under test): the sum of log p(" <choice>" tokens | "Question: ...\\nAnswer:")."""
    picks = []
    with torch.no_grad():
        for question in questions:
            prompt = tok(f"Question: {question['question']}\nAnswer:", add_special_tokens=True)["input_ids"]
            scores = []
            for choice in question["choices"]:
                continuation = tok(f" {choice}", add_special_tokens=False)["input_ids"]
                ids = torch.tensor([prompt + continuation])
                log_probs = model(ids).logits[0, :-1].float().log_softmax(-1)
                targets = ids[0, len(prompt):]
                scores.append(log_probs[len(prompt) - 1 :].gather(-1, targets[:, None]).sum().item())
            picks.append(max(range(len(scores)), key=scores.__getitem__))
    return picks


def test_loo_accuracy_on_multiple_choice_file(model, tok, tmp_path):
    # the "correct" answers are the unmodified model's own picks, so its accuracy is exactly 1, and removing the
    # harmless layer (zero output projections) changes no pick
    picks = own_picks(model, tok, QUESTIONS)
    path = tmp_path / "mc.jsonl"
    path.write_text("\n".join(json.dumps({**q, "answer": pick}) for q, pick in zip(QUESTIONS, picks)))
    data = choice_data(load_choice_questions(path), tok, batch_size=3)
    sums = leave_one_out(model, data, layers=[HARMLESS], progress=False)
    assert sums.baseline == 1.0
    assert sums.performance[HARMLESS] == 1.0 and sums.importance[HARMLESS] == 0.0
    # with every answer moved to another choice, the unmodified model gets none right
    path.write_text("\n".join(json.dumps({**q, "answer": (pick + 1) % len(q["choices"])})
                              for q, pick in zip(QUESTIONS, picks)))
    data = choice_data(load_choice_questions(path), tok, batch_size=3)
    assert leave_one_out(model, data, layers=[HARMLESS], progress=False).baseline == 0.0


def test_skipped_layer_is_restored_even_when_the_forward_fails(model, tok):
    original = model.model.layers[ESSENTIAL]
    with pytest.raises(RuntimeError, match="boom"):
        with skip_layer(model, ESSENTIAL):
            assert model.model.layers[ESSENTIAL] is not original
            raise RuntimeError("boom")
    assert model.model.layers[ESSENTIAL] is original


def reverse_kl_without(model, layer: int, batch: dict[str, torch.Tensor]) -> float:
    """Mean over the scored tokens of KL(p_without_layer || p_unmodified), from the full logits."""
    with torch.no_grad():
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        unmodified = model(**inputs).logits[:, :-1].float().log_softmax(-1)
        with skip_layer(model, layer):
            without = model(**inputs).logits[:, :-1].float().log_softmax(-1)
    per_token = (without.exp() * (without - unmodified)).sum(-1)
    scored = batch["labels"] != -100
    return (per_token[scored].sum() / scored.sum()).item()


def test_loo_works_on_an_apriel_h1_hybrid(tok, texts):
    """Each layer's importance under the KL metric is the mean reverse KL of the model without it, computed
    here from full logits; the unmodified model scores 0."""
    torch.manual_seed(0)
    config = AprielH1Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, mamba_d_state=8, layer_types=["attention", "mamba", "attention"],
        pad_token_id=tok.pad_token_id,
    )
    hybrid = AprielH1ForCausalLM(config).eval()
    data = text_data(texts[:4], tok, "kl", batch_size=4, max_length=48)
    (batch,) = data.batches
    result = leave_one_out(hybrid, data, progress=False)
    assert result.baseline == 0.0 and sorted(result.importance) == [0, 1, 2]
    for layer, value in result.importance.items():
        assert value == pytest.approx(reverse_kl_without(hybrid, layer, batch), rel=1e-4), layer


def test_clear_errors(model, tok, tmp_path, texts):
    data = text_data(texts[:2], tok, "kl", batch_size=2, max_length=32)
    with pytest.raises(ValueError, match="out of range"):
        leave_one_out(model, data, layers=[7], progress=False)
    with pytest.raises(ValueError, match="no layers to rank"):
        leave_one_out(model, data, layers=[], progress=False)
    with pytest.raises(ValueError, match="unknown metric"):
        check_metric("bleu", False)
    with pytest.raises(ValueError, match="needs a multiple-choice file"):
        check_metric("accuracy", False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"]}))
    with pytest.raises(ValueError, match=r"lacks the field\(s\) \['answer'\]"):
        load_choice_questions(bad)
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 5}))
    with pytest.raises(ValueError, match="'answer' is 5"):
        load_choice_questions(bad)


def test_cli_writes_ranking_and_plot(model, tok, tmp_path, monkeypatch, capsys):
    model.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "outputs" / "tiny" / "loo.json"  # as the README's command writes it: only under outputs/
    code = main(["loo", "teacher", "--output", "outputs/tiny/loo.json", "--num-texts", "4",
                 "--max-length", "48", "--no-progress", "--highlight", "1"])
    assert code == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["outputs", "teacher"]
    assert sorted(path.name for path in output.parent.iterdir()) == ["loo.json", "loo.png"]
    said = capsys.readouterr().out
    assert "performance" not in said and "KL(model without it || unmodified model)" in said
    assert f"most important: layer {ESSENTIAL}" in said and f"least: layer {HARMLESS}" in said
    payload = read_ranking(output)
    assert set(payload) == {"method", "model", "metric", "scores", "ranking"}
    assert payload["method"] == "loo" and payload["metric"] == "kl"
    assert payload["ranking"][0] == HARMLESS and payload["ranking"][-1] == ESSENTIAL
    png = output.with_suffix(".png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    assert main(["loo", "teacher", "--output", str(output), "--metric", "bleu"]) == 2
    # the module entry point itself: redraw the plot from the ranking file
    redraw = subprocess.run([sys.executable, "-m", "recipes.importance", "plot", str(output), "--plot",
                             str(tmp_path / "again.png")], capture_output=True, text=True, timeout=120)
    assert redraw.returncode == 0, redraw.stderr
    assert (tmp_path / "again.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("metric, words", [
    ("kl", ["KL(model without it || unmodified model)", "is 0"]),
    ("loss", ["unmodified model: loss", "how much the loss rises without it"]),
])
def test_the_printed_scores_say_what_the_baseline_and_the_importance_are(model, tok, texts, metric, words):
    from recipes.importance.loo import describe_scores

    result = leave_one_out(model, text_data(texts, tok, metric, batch_size=4, max_length=96), progress=False)
    line = describe_scores(result, "the bundled text")
    assert all(word in line for word in words) and "performance" not in line, line
    assert f"most important: layer {ESSENTIAL}" in line
