"""The eval stage run for real on nano llamas: report.json, eval.jsonl, logs and scoring.

Plans come from real recipes compiled in a temporary folder, and ``run()`` is called the
way the executor calls it. Where the verdict of each row must be known, either the
generation function is replaced (scoring end to end) or a model is trained in the test
to always answer the same number (generation, left padding and EOS end to end).
"""

import dataclasses
import json
import math
import textwrap
from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.data import PROMPT_TEMPLATE, load_rows
from llm_recipe.runtime.log import StageLog, read_metrics
from llm_recipe.runtime.metrics import extract_answer, render_prompt
from llm_recipe.runtime.stages import eval as eval_stage

pytestmark = pytest.mark.integration

NANO = ("{init: {architecture: llama, size: nano}, "
        "tokenizer: {train: {data: corpus, vocab_size: 400}}}")
ARITH_TEST = {"builtin": "arithmetic", "split": "test", "n": 20, "format": "gsm8k"}


def recipe(root: Path, stage: str, *, models: str = f"a: {NANO}", datasets: str = "",
           stages: str = "") -> Path:
    """A recipe whose stage ``eval`` is ``stage`` (YAML), after the other ``stages``."""
    text = f"""\
recipe: 1
name: evaltest
seed: 0
models:
{textwrap.indent(models, "  ")}
datasets:
  corpus: {{builtin: corpus, format: text, n: 300}}
  arith_test: {{builtin: arithmetic, split: test, n: 20, format: gsm8k}}
{textwrap.indent(datasets, "  ")}
compute: {{launcher: local, gpus_per_node: 0, precision: fp32}}
stages:
{textwrap.indent(stages, "  ")}
  eval:
{textwrap.indent(textwrap.dedent(stage), "    ")}
"""
    path = root / "recipe.yaml"
    path.write_text(text, "utf-8")
    return path


class Progress:
    def __init__(self):
        self.total, self.updates = None, []

    def start(self, stage, total, description):
        self.total = total

    def update(self, stage, completed, fields):
        self.updates.append((completed, dict(fields)))

    def finish(self, stage):
        pass


def run_eval(root: Path, path: Path, progress=None, plan=None):
    plan = plan or compile_recipe(path, cwd=root)
    stage = plan.stage("eval")
    ctx = StageContext(plan, stage, root=root, log=StageLog(root / stage.dir, "eval", progress))
    return eval_stage.run(ctx), root / stage.dir


def read_lines(stage_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "eval.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    """Two identical random-init nano llamas on 12 arithmetic problems."""
    root = tmp_path_factory.mktemp("random")
    path = recipe(root, """\
        kind: eval
        models: [a, b]
        data: arith_test
        metrics: [gsm8k_accuracy, perplexity]
        limit: 12
        generation: {max_new_tokens: 24, batch_size: 5}
        """, models=f"a: {NANO}\nb: {NANO}")
    progress = Progress()
    result, stage_dir = run_eval(root, path, progress)
    report = json.loads((stage_dir / "report.json").read_text())
    return result, report, read_lines(stage_dir), stage_dir, progress


def test_report_shape_and_result(random_run):
    result, report, _, _, _ = random_run
    assert report["data"] == "arith_test" and report["examples"] == 12
    assert report["metrics"] == ["gsm8k_accuracy", "perplexity"]
    assert list(report["models"]) == ["a", "b"]
    for values in report["models"].values():
        assert {"gsm8k_accuracy", "correct", "total", "perplexity"} <= set(values)
        assert values["total"] == 12
    assert [row["model"] for row in report["table"]] == ["a", "b"]
    assert set(report["table"][0]) == {"model", "type", "gsm8k_accuracy", "perplexity"}
    assert result.key_metric == "b/gsm8k_accuracy"
    assert set(result.metrics) == {"a/gsm8k_accuracy", "a/perplexity", "b/gsm8k_accuracy",
                                   "b/perplexity"}
    assert result.metrics["a/perplexity"] == report["models"]["a"]["perplexity"]


def test_eval_jsonl_has_one_line_per_example_per_model(random_run):
    _, report, lines, _, _ = random_run
    assert len(lines) == 2 * 12
    assert [(r["model"], r["index"]) for r in lines] == [
        (m, i) for m in ("a", "b") for i in range(12)]
    questions = [r["question"] for r in load_rows("t", ARITH_TEST)[:12]]
    for line in lines:
        assert {"model", "index", "question", "reference", "completion", "prediction",
                "correct", "nll", "tokens"} <= set(line)
        assert isinstance(line["correct"], bool)  # `jq .correct | grep true` counts it
        assert line["question"] == questions[line["index"]]
    for model, values in report["models"].items():
        mine = [r for r in lines if r["model"] == model]
        correct = sum(r["correct"] for r in mine)
        assert values["correct"] == correct
        assert values["gsm8k_accuracy"] == correct / len(mine)
        mean = sum(r["nll"] * r["tokens"] for r in mine) / sum(r["tokens"] for r in mine)
        assert values["perplexity"] == pytest.approx(math.exp(mean), rel=1e-3)


def test_random_models_know_nothing_and_identical_models_agree(random_run):
    _, report, lines, _, _ = random_run
    a, b = report["models"]["a"], report["models"]["b"]
    assert a["gsm8k_accuracy"] <= 1 / 12  # random weights: near 0
    assert math.isfinite(a["perplexity"]) and 1 < a["perplexity"] < 4000
    assert {k: a[k] for k in ("gsm8k_accuracy", "perplexity", "tokens")} == {
        k: b[k] for k in ("gsm8k_accuracy", "perplexity", "tokens")}
    assert [r["completion"] for r in lines[:12]] == [r["completion"] for r in lines[12:]]


def test_log_metrics_and_progress(random_run):
    _, report, _, stage_dir, progress = random_run
    rows = read_metrics(stage_dir)
    assert [(r["phase"], r["model"]) for r in rows] == [("eval", "a"), ("eval", "b")]
    assert rows[0]["gsm8k_accuracy"] == report["models"]["a"]["gsm8k_accuracy"]
    assert "[eval] step=12 model=a gsm8k_accuracy=" in (stage_dir / "train.log").read_text()
    assert progress.total == 2 * 12 * 2  # two models, a generation and a perplexity pass
    assert progress.updates[-1][0] == progress.total
    assert "acc" in progress.updates[0][1]


def test_scoring_end_to_end_with_controlled_generation(tmp_path, monkeypatch):
    path = recipe(tmp_path, """\
        kind: eval
        models: [a]
        data: arith_test
        metrics: [gsm8k_accuracy, exact_match]
        limit: 10
        prompt_template: "Q: {question}\\nA:"
        generation: {max_new_tokens: 8, batch_size: 3}
        """)
    rows = load_rows("t", ARITH_TEST)[:10]
    by_prompt = {render_prompt("Q: {question}\nA:", r): (i, r) for i, r in enumerate(rows)}

    def fake_generate(model, tokenizer, prompts, config):
        assert len(prompts) <= 3 and config.max_new_tokens == 8
        out = []
        for prompt in prompts:
            i, row = by_prompt[prompt]
            answer = int(extract_answer(row["answer"]))
            out.append([" " + row["answer"], f" The answer is ${answer}.0",
                        f" #### {answer + 1}", " I do not know"][i % 4])
        return out

    monkeypatch.setattr(eval_stage, "generate", fake_generate)
    result, stage_dir = run_eval(tmp_path, path)
    lines = read_lines(stage_dir)
    assert [r["correct"] for r in lines] == [i % 4 in (0, 1) for i in range(10)]
    assert [r["exact_match"] for r in lines] == [i % 4 == 0 for i in range(10)]
    assert [r["prediction"] is None for r in lines] == [i % 4 == 3 for i in range(10)]
    assert result.metrics == {"a/gsm8k_accuracy": 0.6, "a/exact_match": 0.3}
    report = json.loads((stage_dir / "report.json").read_text())
    assert report["models"]["a"]["no_answer"] == 2
    assert report["prompt_template"] == "Q: {question}\nA:"


def test_prompt_completion_exact_match_and_perplexity(tmp_path, monkeypatch):
    data = [{"prompt": f"Premise: {n} cats. Hypothesis: {n} pets. Relation:",
             "completion": label} for n, label in
            enumerate([" entailment", " neutral", " contradiction", " neutral"])]
    (tmp_path / "nli.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    path = recipe(tmp_path, """\
        kind: eval
        models: [a]
        data: nli
        metrics: [exact_match, perplexity]
        generation: {max_new_tokens: 4, batch_size: 8}
        """, datasets="nli: {path: nli.jsonl, format: prompt_completion}")
    answers = [" Entailment\nPremise: more", " contradiction", "  contradiction ", "neutral."]
    monkeypatch.setattr(eval_stage, "generate",
                        lambda model, tokenizer, prompts, config: answers[: len(prompts)])
    result, stage_dir = run_eval(tmp_path, path)
    lines = read_lines(stage_dir)
    assert [r["correct"] for r in lines] == [True, False, True, False]
    assert lines[0]["prompt"] == data[0]["prompt"] and lines[0]["reference"] == "entailment"
    assert lines[0]["prediction"] == "Entailment"
    assert all(r["tokens"] >= 1 for r in lines)  # only the completion's tokens are scored
    assert result.metrics["a/exact_match"] == 0.5
    assert 1 < result.metrics["a/perplexity"] < 4000
    assert result.key_metric == "a/exact_match"


def train_fixed_answer_model(folder: Path, rows: list[dict], answer: str) -> None:
    """A nano llama trained to answer every prompt with ``answer`` and EOS."""
    import torch

    from llm_recipe.runtime.builtin import corpus
    from llm_recipe.runtime.models import init_model, train_tokenizer

    texts = [r["text"] for r in corpus(300)] + [r["question"] for r in rows]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    model = init_model({"architecture": "llama", "size": "nano"}, tokenizer, seed=0)
    prompts = [tokenizer(PROMPT_TEMPLATE.format(question=r["question"]))["input_ids"]
               for r in rows]
    target = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    width = max(len(p) for p in prompts) + len(target)
    ids = torch.tensor([p + target + [tokenizer.pad_token_id] * (width - len(p) - len(target))
                        for p in prompts])
    labels = torch.full_like(ids, -100)
    for row, p in enumerate(prompts):
        labels[row, len(p):len(p) + len(target)] = torch.tensor(target)
    mask = (labels != -100) | (torch.arange(width) < torch.tensor([[len(p)] for p in prompts]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(80):
        loss = model(input_ids=ids, attention_mask=mask.long(), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def test_trained_model_answers_are_generated_and_scored(tmp_path):
    rows = load_rows("t", ARITH_TEST)[:14]
    target = extract_answer(rows[0]["answer"])
    train_fixed_answer_model(tmp_path / "fixed", rows, f" #### {target}")
    path = recipe(tmp_path, """\
        kind: eval
        models: [fixed]
        data: arith_test
        limit: 14
        generation: {max_new_tokens: 12, batch_size: 5}
        """, models="fixed: {path: fixed}")
    result, stage_dir = run_eval(tmp_path, path)
    lines = read_lines(stage_dir)
    # Prompts of different lengths share each batch: with wrong padding they would not all
    # continue with the trained answer; the EOS learned after it ends every completion.
    assert [r["completion"] for r in lines] == [f" #### {target}"] * 14
    expected = [extract_answer(r["answer"]) == target for r in rows]
    assert [r["correct"] for r in lines] == expected
    assert result.metrics["fixed/gsm8k_accuracy"] == sum(expected) / 14 > 0


def test_sampling_is_seeded(tmp_path):
    path = recipe(tmp_path, """\
        kind: eval
        models: [a, b]
        data: arith_test
        limit: 4
        generation: {max_new_tokens: 10, temperature: 1.0, top_p: 0.9, batch_size: 4}
        """, models=f"a: {NANO}\nb: {NANO}")
    _, stage_dir = run_eval(tmp_path, path)
    first = [r["completion"] for r in read_lines(stage_dir)]
    assert first[:4] == first[4:]  # the same weights and the same seed: the same samples
    _, stage_dir = run_eval(tmp_path, path)
    assert [r["completion"] for r in read_lines(stage_dir)] == first


def test_a_patch_is_evaluated_on_its_base(tmp_path):
    """A patch input (a continual stage's output folder) is applied to a fresh copy of its
    base: an initial patch (delta 0) scores exactly like the base, a moved one does not."""
    import torch

    from llm_recipe.runtime.continual.patch import PatchSet, patch_config, save_patch_dir
    from llm_recipe.runtime.loading import load_named_model

    path = recipe(tmp_path, "kind: eval\nmodels: [a, b]\ndata: arith_test\n"
                  "metrics: [perplexity]\nlimit: 6\n", models=f"a: {NANO}\nb: {NANO}")
    plan = compile_recipe(path, cwd=tmp_path)
    stage = plan.stage("eval")
    inputs = tuple(dataclasses.replace(i, ref="cl", type="patch", base="a", path="patch")
                   if i.field == "models.1" else i for i in stage.inputs)
    plan = dataclasses.replace(plan, stages=(dataclasses.replace(stage, inputs=inputs),))
    ctx = StageContext(plan, plan.stage("eval"), tmp_path, StageLog(tmp_path / "x", "eval"))
    base, _ = load_named_model(ctx, "a")
    patches = PatchSet(patch_config(base, rank=4, layers="all", gate_init=0.0))
    save_patch_dir(tmp_path / "patch", patches.tensors(), patches.config)
    result, _ = run_eval(tmp_path, path, plan=plan)
    assert result.metrics["cl/perplexity"] == result.metrics["a/perplexity"]
    with torch.no_grad():
        for block in patches.blocks.values():
            block.up.fill_(0.5)
    save_patch_dir(tmp_path / "patch", patches.tensors(), patches.config)
    result, _ = run_eval(tmp_path, path, plan=plan)
    assert result.metrics["cl/perplexity"] != result.metrics["a/perplexity"]


def test_adapter_is_evaluated_on_its_base(tmp_path):
    """A freshly initialised LoRA adapter (B = 0) must score exactly like its base model."""
    from peft import LoraConfig, get_peft_model

    path = recipe(tmp_path, """\
        kind: eval
        models: [a, tuned]
        data: arith_test
        metrics: [gsm8k_accuracy, perplexity]
        limit: 6
        generation: {max_new_tokens: 8, batch_size: 6}
        """, stages="tuned: {kind: sft, model: a, data: arith_test, adapter: {type: lora, r: 4},"
                    " train: {max_steps: 1, lr: 1.0e-3}}")
    plan = compile_recipe(path, cwd=tmp_path)
    tuned = plan.stage("tuned")
    assert tuned.output.type == "adapter"
    ctx = StageContext(plan, tuned, root=tmp_path, log=StageLog(tmp_path / tuned.dir, "tuned"))
    base, tokenizer = ctx.load_model(ctx.input("model"))
    adapter = get_peft_model(base, LoraConfig(r=4, lora_alpha=8,
                                              target_modules=["q_proj", "v_proj"]))
    adapter.save_pretrained(str(ctx.output_path))
    tokenizer.save_pretrained(str(ctx.output_path))
    result, stage_dir = run_eval(tmp_path, path, plan=plan)
    report = json.loads((stage_dir / "report.json").read_text())
    assert [(r["model"], r["type"]) for r in report["table"]] == [("a", "model"),
                                                                  ("tuned", "adapter")]
    assert result.metrics["tuned/perplexity"] == pytest.approx(result.metrics["a/perplexity"])
    lines = read_lines(stage_dir)
    assert [r["completion"] for r in lines[:6]] == [r["completion"] for r in lines[6:]]
