"""lm-eval on our checkpoints: the local tasks, the ``apriel_h1`` model against lm-eval's ``hf``, the wrappers.

The tiny teacher and hybrid are random (conftest), so their answers are wrong; what is compared is every
generated string and every log-likelihood, which a decoding or scoring difference would change. Exact-match
scoring itself is checked with a scripted model that answers some problems right.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.model import LM  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from recipes.evaluation import lm_eval_model  # noqa: E402
from recipes.evaluation.lm_eval_model import AprielH1LM  # noqa: E402
from recipes.importance.scoring import (  # noqa: E402
    choice_data, head_weights, load_choice_questions, row_sums,
)
from recipes.lm_eval_tasks import CHOICES_TASK, SYNTHETIC_TASK, TASKS_DIR, build  # noqa: E402
from recipes.training.held_out import HELD_OUT_SEED  # noqa: E402
from recipes.training.kd_loss import final_hidden_states  # noqa: E402
from recipes.training.synthetic import generate_problems, is_correct  # noqa: E402

GENERATED_TOKENS = 12  # enough to compare decoders, short enough for the reference Mamba scan on 2 CPU cores


@pytest.fixture(scope="module")
def task_manager() -> TaskManager:
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


def evaluate(lm, task: str, task_manager: TaskManager, limit: int, **kwargs) -> dict:
    return lm_eval.simple_evaluate(
        model=lm, tasks=[task], limit=limit, task_manager=task_manager, log_samples=True, **kwargs
    )


def responses(output: dict, task: str) -> list:
    samples = sorted(output["samples"][task], key=lambda s: s["doc_id"])
    return json.loads(json.dumps([sample["resps"] for sample in samples]))  # tuples as lists, as from a file


CHOICE_ROWS = [  # a user's MMLU-style file (synthetic questions), answers as an index and as a letter
    {"question": "What is 2 + 3?", "choices": ["5", "7", "23", "1"], "answer": 0},
    {"question": "Who is the tallest?", "choices": ["Alice", "Bob"], "answer": "B"},
]
SYNTHETIC_SETTINGS = dict(apply_chat_template=True, gen_kwargs={"max_gen_toks": GENERATED_TOKENS})


@pytest.fixture(scope="module")
def choices_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("choices") / "mmlu.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in CHOICE_ROWS))
    return path


@pytest.fixture(scope="module")
def hybrid_under_hf(student_dir, choices_file, tmp_path_factory) -> dict:
    """What ``lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True`` computes on the hybrid, for
    both local tasks: a process that has not imported this package, so the model loads as the remote code saved
    beside its weights."""
    work = tmp_path_factory.mktemp("hf_remote_code")
    script = textwrap.dedent(
        f"""
        import json, lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
        lm = HFLM(pretrained={str(student_dir)!r}, trust_remote_code=True, device="cpu", batch_size=1)
        runs = {{"class_module": type(lm.model).__module__}}
        for task, metadata, settings, limit in [
            ({SYNTHETIC_TASK!r}, {{}}, json.loads({json.dumps(SYNTHETIC_SETTINGS)!r}), 4),
            ({CHOICES_TASK!r}, {{"choices_file": {str(choices_file)!r}}}, {{}}, None),
        ]:
            manager = TaskManager(include_path={str(TASKS_DIR)!r}, include_defaults=False, metadata=metadata)
            out = lm_eval.simple_evaluate(model=lm, tasks=[task], limit=limit, task_manager=manager, log_samples=True,
                                          **settings)
            runs[task] = {{"results": out["results"], "samples": out["samples"]}}
        json.dump(runs, open({str(work / "out.json")!r}, "w"), default=str)
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(work / "modules"), "PATH": "/usr/bin:/bin",
           "HF_DATASETS_CACHE": str(work / "datasets")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads((work / "out.json").read_text())
    assert runs["class_module"].startswith("transformers_modules"), runs["class_module"]
    return runs


def test_committed_task_data_is_what_the_builder_writes():
    for name, text in build.data_files().items():
        assert (TASKS_DIR / name).read_text() == text, f"regenerate with python -m recipes.lm_eval_tasks.build ({name})"
    first = json.loads((TASKS_DIR / build.PROBLEMS_FILE).read_text().splitlines()[0])
    assert first["answer"] == generate_problems(1, HELD_OUT_SEED)[0].answer


def test_every_choice_question_holds_its_answer_once():
    problems = generate_problems(build.NUM_PROBLEMS, HELD_OUT_SEED)
    for problem, row in zip(problems, load_choice_questions(TASKS_DIR / build.CHOICES_FILE)):
        assert row["choices"][row["answer"]] == problem.answer and row["choices"].count(problem.answer) == 1


class ScriptedLM(LM):
    """Answers every other problem with its reference solution and the rest with a wrong answer line."""

    def __init__(self):
        super().__init__()
        self.problems = {p.question: p for p in generate_problems(build.NUM_PROBLEMS, HELD_OUT_SEED)}
        self.completions = []

    def generate_until(self, requests, disable_tqdm=False):
        out = []
        for request in requests:
            problem = self.problems[request.doc["question"]]
            right = len(self.completions) % 2 == 0
            out.append(problem.solution() if right else "Step 1: a guess\nAnswer: 12345")
            self.completions.append((out[-1], problem.answer))
        return out

    def loglikelihood(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError


def test_synthetic_task_scores_the_answer_line_as_is_correct_does(task_manager):
    lm = ScriptedLM()
    output = lm_eval.simple_evaluate(model=lm, tasks=[SYNTHETIC_TASK], limit=8, task_manager=task_manager)
    expected = sum(is_correct(completion, answer) for completion, answer in lm.completions) / len(lm.completions)
    assert expected == 0.5
    assert output["results"][SYNTHETIC_TASK]["exact_match,answer_line"] == expected


@pytest.fixture(scope="module")
def checkpoints(teacher_dir, student_dir):
    return {"teacher": teacher_dir, "hybrid": student_dir}


@pytest.mark.parametrize("name, decoder", [("teacher", "DecodeEngine"), ("teacher", "generate"), ("hybrid", "DecodeEngine")])
def test_greedy_generations_and_exact_match_are_identical_for_hf_and_apriel_h1(
    name, decoder, checkpoints, task_manager, request, monkeypatch
):
    """``hf`` decodes one prompt at a time (the hybrid as remote code); ours decodes all four at once, with no
    trust_remote_code, on the decode engine or (where the engine refuses the model) on left-padded ``generate``.
    Same strings, same exact match."""
    if decoder == "generate":

        def refusing_engine(*args, **kwargs):
            raise ValueError("the decode engine runs full attention only; this model uses a sliding window")

        monkeypatch.setattr(lm_eval_model, "DecodeEngine", refusing_engine)
    directory, settings = checkpoints[name], SYNTHETIC_SETTINGS
    if name == "hybrid":
        reference = request.getfixturevalue("hybrid_under_hf")[SYNTHETIC_TASK]
    else:
        hf = HFLM(pretrained=str(directory), device="cpu", batch_size=1)
        reference = evaluate(hf, SYNTHETIC_TASK, task_manager, 4, **settings)
    ours = AprielH1LM(pretrained=str(directory), device="cpu", decode_batch_size=4)
    assert not type(ours.model).__module__.startswith("transformers_modules")  # this package's classes
    candidate = evaluate(ours, SYNTHETIC_TASK, task_manager, 4, **settings)
    generated = [resps[0][0] for resps in responses(candidate, SYNTHETIC_TASK)]
    assert generated == [resps[0][0] for resps in responses(reference, SYNTHETIC_TASK)]
    assert len(set(generated)) > 1 and all(generated)  # real, varied output
    metric = "exact_match,answer_line"
    assert candidate["results"][SYNTHETIC_TASK][metric] == reference["results"][SYNTHETIC_TASK][metric]
    assert ours.generation_stats["generated_tokens"] > 0 and ours.generation_stats["decoder"] == decoder


def test_choice_loglikelihoods_match_the_loo_scoring_for_both_backends(student_dir, tokenizer, choices_file, hybrid_under_hf):
    """A user's MMLU-style file through --metadata: lm-eval's per-choice log-likelihoods under ``hf`` (remote
    code) and ``apriel_h1`` agree with each other and with recipes.importance's own scoring of the file."""
    with_file = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"choices_file": str(choices_file)})
    ours = AprielH1LM(pretrained=str(student_dir), device="cpu", batch_size=4)
    outputs = {"hf": hybrid_under_hf[CHOICES_TASK], "apriel_h1": evaluate(ours, CHOICES_TASK, with_file, None)}
    scores = {  # per question: the log-likelihood of each choice
        name: [torch.tensor([float(r[0][0]) for r in resps]) for resps in responses(output, CHOICES_TASK)]
        for name, output in outputs.items()
    }
    questions = load_choice_questions(choices_file)
    assert [len(q["choices"]) for q in questions] == [len(s) for s in scores["hf"]]

    model = ours.model
    data = choice_data(questions, tokenizer, batch_size=8)
    loo = torch.zeros(data.num_rows)
    for batch in data.batches:
        loo[batch["row"]] = row_sums(final_hidden_states(model, batch), head_weights(model), batch["labels"]).logprob
    flat = {name: torch.cat(value) for name, value in scores.items()}
    torch.testing.assert_close(flat["apriel_h1"], flat["hf"], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(flat["apriel_h1"], loo, atol=1e-4, rtol=1e-5)
    for output in outputs.values():  # the accuracy is LOO's: the most likely choice, per question
        expected = sum(int(s.argmax()) == q["answer"] for s, q in zip(scores["apriel_h1"], questions)) / len(questions)
        assert output["results"][CHOICES_TASK]["acc,none"] == expected


def test_a_checkpoint_directory_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(ValueError, match="the checkpoint .*missing/model does not exist"):
        AprielH1LM(pretrained=str(tmp_path / "missing" / "model"), device="cpu")


def test_unknown_generation_options_are_refused_not_ignored(student_dir, task_manager):
    ours = AprielH1LM(pretrained=str(student_dir), device="cpu")
    with pytest.raises(ValueError, match="repetition_penalty.*--model hf"):
        evaluate(ours, SYNTHETIC_TASK, task_manager, 1, gen_kwargs={"max_gen_toks": 2, "repetition_penalty": 1.3})


@pytest.mark.slow  # lm-eval's CLI indexes its ~14k built-in tasks
def test_the_wrapper_command_knows_model_apriel_h1_and_the_local_tasks(student_dir, tmp_path, monkeypatch, capsys):
    """``apriel-h1-lm-eval`` == ``lm_eval`` plus our model and tasks: no trust_remote_code, no --include_path."""
    from recipes import lm_eval_cli

    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"question": "2 + 2?", "choices": ["4", "5"], "answer": 0}) + "\n")
    argv = ["apriel-h1-lm-eval", "--model", "apriel_h1", "--model_args", f"pretrained={student_dir}", "--device", "cpu",
            "--tasks", CHOICES_TASK, "--metadata", json.dumps({"choices_file": str(path)})]
    monkeypatch.setattr(sys, "argv", argv)
    lm_eval_cli.main()
    table = capsys.readouterr().out
    assert f"|{CHOICES_TASK}" in table and "acc" in table and "apriel_h1" in table
