"""Held-out evaluation scores completions by their final answer and measures decode throughput."""

from __future__ import annotations

import pytest
import torch

from recipes.tiny_teacher import build_tokenizer
from recipes.training.held_out import score_on_problems
from recipes.training.synthetic import generate_problems


class ScriptedModel:
    """Stands in for a model: 'generates' a given completion per problem, so scoring can be checked exactly."""

    device = torch.device("cpu")

    def __init__(self, tokenizer, completions):
        self.tokenizer, self.completions, self.calls = tokenizer, list(completions), 0

    def eval(self):
        return self

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        rows = []
        for _ in range(input_ids.shape[0]):
            rows.append(self.tokenizer(self.completions[self.calls], add_special_tokens=False)["input_ids"][:max_new_tokens])
            self.calls += 1
        width = max(len(r) for r in rows)
        padded = [r + [self.tokenizer.pad_token_id] * (width - len(r)) for r in rows]
        return torch.cat([input_ids, torch.tensor(padded)], dim=1)


def test_accuracy_counts_exact_final_answers_and_throughput_counts_generated_tokens():
    tokenizer = build_tokenizer()
    problems = generate_problems(6, seed=7)
    completions = [p.solution() if i % 2 == 0 else "Step 1: guess\nAnswer: nonsense" for i, p in enumerate(problems)]
    score = score_on_problems(ScriptedModel(tokenizer, completions), tokenizer, problems, max_new_tokens=400, batch_size=4)
    assert score.accuracy == pytest.approx(0.5)
    expected_tokens = sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in completions)
    assert score.generated_tokens == expected_tokens and score.tokens_per_s > 0


def test_evaluation_needs_problems():
    with pytest.raises(ValueError, match="no problems"):
        score_on_problems(None, build_tokenizer(), [])


def test_teacher_forced_scores_reward_the_model_that_predicts_the_solution():
    """A model whose next-token prediction is always right scores accuracy 1 and near-zero loss; a uniform one
    scores log(vocab)."""
    from transformers.modeling_outputs import CausalLMOutput

    from recipes.training.held_out import teacher_forced_scores

    tokenizer = build_tokenizer()
    vocab = len(tokenizer)

    class Oracle(torch.nn.Module):
        device = torch.device("cpu")

        def forward(self, input_ids, attention_mask, use_cache):
            logits = torch.full((*input_ids.shape, vocab), -30.0)
            logits[:, :-1].scatter_(-1, input_ids[:, 1:, None], 30.0)
            return CausalLMOutput(logits=logits)

    class Uniform(Oracle):
        def forward(self, input_ids, attention_mask, use_cache):
            return CausalLMOutput(logits=torch.zeros(*input_ids.shape, vocab))

    problems = generate_problems(5, seed=3)
    perfect = teacher_forced_scores(Oracle(), tokenizer, problems, batch_size=2)
    assert perfect.token_accuracy == 1.0 and perfect.cross_entropy < 1e-6 and perfect.num_tokens > 100
    uniform = teacher_forced_scores(Uniform(), tokenizer, problems, batch_size=2)
    assert uniform.cross_entropy == pytest.approx(torch.log(torch.tensor(float(vocab))).item(), rel=1e-5)
