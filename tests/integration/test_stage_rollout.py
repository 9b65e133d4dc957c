"""The rollout stage for real on a nano llama, through `recipe run`: records, summary,
left-padded seeded generation, preferences read back for dpo, vLLM refused without
vLLM, and kill -9 in the middle of a rollout resumed without duplicates or gaps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import pytest

from llm_recipe.cli import main
from llm_recipe.compiler import compile_recipe
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.data import check_rows
from llm_recipe.runtime.log import StageLog, read_metrics

pytestmark = pytest.mark.integration

RECIPE = """\
recipe: 1
name: roll
seed: 11
models:
  scratch:
    init: {architecture: llama, size: nano, context_length: 512}
    tokenizer: {train: {data: corpus, vocab_size: 300}}
datasets:
  corpus: {builtin: corpus, n: 300, format: text}
  math: {builtin: arithmetic, split: train, n: 60, format: gsm8k}
stages:
  rollout:
    kind: rollout
    policy: scratch
    prompts: math
    n_questions: 6
    variants: [direct, reflective, deliberative]
    samples_per_variant: 2
    generation: {max_new_tokens: 12, temperature: 1.0, top_p: 0.95, batch_size: 4}
    rewards: {correctness: 1.0, quality: 0.5, length_penalty: 0.1}
  preferences:
    kind: preferences
    rollouts: rollout
    strategy: quality
    margin: 0.0
  dpo:
    kind: dpo
    policy: scratch
    data: preferences
    train: {max_steps: 2, batch_size: 2, max_seq_len: 256}
"""
FIELDS = {"variant", "sample", "prompt", "full_text", "answer", "num_tokens", "correct",
          "reward", "components"}
VARIANTS = ["direct", "reflective", "deliberative"]
STAGE = Path("outputs") / "roll" / "rollout"


def recipe_run(*args: str) -> tuple[int, str]:
    out = StringIO()
    with redirect_stdout(out):
        code = main(["run", "roll.yaml", "--json", *args])
    return code, out.getvalue()


def outcomes(*args: str) -> dict:
    code, text = recipe_run(*args)
    assert code == 0, text
    return {s["name"]: s for s in json.loads(text)["stages"]}


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def ran(tmp_path_factory, one_thread):
    """`recipe run --only rollout`, then `--only preferences`, in one workspace."""
    root = tmp_path_factory.mktemp("rollout")
    (root / "roll.yaml").write_text(RECIPE)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        first = outcomes("--only", "rollout")
        prefs = outcomes("--only", "preferences")
        yield root, first, prefs


def test_records_have_every_field_and_the_counts(ran) -> None:
    root, first, _ = ran
    assert first["rollout"]["action"] == "ran"
    rows = rows_of(root / STAGE / "rollouts.jsonl")
    check_rows(rows, "rollouts", "rollouts.jsonl")
    assert len(rows) == 6 and len({r["question_id"] for r in rows}) == 6
    for row in rows:
        assert {"question_id", "question", "reference", "reference_answer", "samples"} <= set(row)
        assert row["reference"].split("####")[-1].strip() == row["reference_answer"]
        assert [(s["variant"], s["sample"]) for s in row["samples"]] == [
            (v, i) for v in VARIANTS for i in range(2)]
        for s in row["samples"]:
            assert set(s) == FIELDS
            assert set(s["components"]) == {"correctness", "quality", "length_penalty"}
            assert 0 < s["num_tokens"] <= 12 and isinstance(s["correct"], bool)
            assert s["reward"] == pytest.approx(s["components"]["correctness"]
                                                + 0.5 * s["components"]["quality"]
                                                + 0.1 * s["components"]["length_penalty"])
            assert s["prompt"].endswith(f"Question: {row['question']}\nAnswer:")
    manifest = json.loads((root / STAGE / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["key_metric"] == "accuracy"


def test_summary_per_variant_matches_the_records(ran) -> None:
    root, first, _ = ran
    rows = rows_of(root / STAGE / "rollouts.jsonl")
    summary = json.loads((root / STAGE / "summary.json").read_text())
    assert set(summary["variants"]) == set(VARIANTS) and summary["trajectories"] == 36
    for name in VARIANTS:
        mine = [s for r in rows for s in r["samples"] if s["variant"] == name]
        values = summary["variants"][name]
        assert values["trajectories"] == 12
        assert values["accuracy"] == sum(s["correct"] for s in mine) / 12
        assert values["mean_reward"] == pytest.approx(sum(s["reward"] for s in mine) / 12)
        assert first["rollout"]["metrics"][f"{name}/mean_reward"] == pytest.approx(
            values["mean_reward"])
    log = (root / STAGE / "train.log").read_text()
    assert "generation backend: transformers generate" in log and "left-padded" in log
    assert [r["step"] for r in read_metrics(root / STAGE) if r["phase"] == "rollout"] == [1, 2]


def test_preferences_are_what_the_dpo_stage_reads(ran) -> None:
    root, _, prefs = ran
    assert prefs["preferences"]["action"] == "ran"
    plan = compile_recipe(root / "roll.yaml", cwd=root)
    dpo = plan.stage("dpo")
    data = next(i for i in dpo.inputs if i.field == "data")
    assert (data.format, data.path) == ("preference", plan.stage("preferences").output.path)
    ctx = StageContext(plan, dpo, root, StageLog(root / "scratch-log", "dpo"))
    pairs = ctx.rows("data")  # data.py's preference format, checked on the way
    assert pairs and {"prompt", "chosen", "rejected", "pair_type"} <= set(pairs[0])
    sampled = {(s["prompt"], s["full_text"]) for r in rows_of(root / STAGE / "rollouts.jsonl")
               for s in r["samples"]}
    for pair in pairs:  # the prompt the chosen text was sampled from; completions only
        assert (pair["prompt"], pair["chosen"]) in sampled
        assert any(text == pair["rejected"] for _, text in sampled)


def test_forced_rerun_starts_clean_and_samples_the_same(ran) -> None:
    root, _, _ = ran
    before = (root / STAGE / "rollouts.jsonl").read_bytes()
    (root / STAGE / "checkpoints" / "checkpoint-7").mkdir()  # a leftover of another run
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        again = outcomes("--only", "rollout", "--force", "rollout")
    assert again["rollout"]["action"] == "ran"
    assert (root / STAGE / "rollouts.jsonl").read_bytes() == before
    assert sorted(p.name for p in (root / STAGE / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-1", "checkpoint-2"]


def test_generation_is_left_padded_and_seeded(ran) -> None:
    from llm_recipe.runtime.rl.generation import Sampling, TransformersGenerator

    root, _, _ = ran
    plan = compile_recipe(root / "roll.yaml", cwd=root)
    stage = plan.stage("rollout")
    ctx = StageContext(plan, stage, root, StageLog(root / "scratch-log", "rollout"))
    model, tokenizer = ctx.load_model(ctx.input("policy"))
    short = "Question: Kai has 3 apples. How many?\nAnswer:"
    long = "Question: " + "Sam buys 8 bags with 3 apples in each bag. " * 4 + "\nAnswer:"
    greedy = TransformersGenerator(model, tokenizer, Sampling(max_new_tokens=8))
    ids, mask = greedy.encode([short, long])
    padding = int((mask[0] == 0).sum())
    assert padding > 0 and mask[0, :padding].sum() == 0 and mask[0, padding:].all()
    assert (ids[0, :padding] == tokenizer.pad_token_id).all()
    alone = greedy.generate([short], 1, seed=0)[0][0]
    batched = greedy.generate([short, long], 1, seed=0)[0][0]
    assert batched == alone  # right padding would continue from pad tokens

    sampler = TransformersGenerator(model, tokenizer, Sampling(max_new_tokens=8,
                                                               temperature=1.0))
    first = sampler.generate([short, long], 3, seed=123)
    assert [len(c) for c in first] == [3, 3]
    assert sampler.generate([short, long], 3, seed=123) == first
    assert sampler.generate([short, long], 3, seed=124) != first


def test_vllm_asked_for_without_vllm_is_a_recipe_error(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "roll.yaml").write_text(RECIPE)
    monkeypatch.chdir(tmp_path)
    code = main(["run", "roll.yaml", "--only", "rollout",
                 "--set", "stages.rollout.generation.backend=vllm"])
    shown = capsys.readouterr()
    assert code == 2  # refused before any stage starts (compiler/preflight.py)
    assert ("stage rollout cannot run on this machine: generation backend vllm needs the vllm "
            "package, which is not installed") in shown.err
    assert "stages.rollout.generation.backend: transformers" in shown.err
    assert not (tmp_path / STAGE).exists()  # nothing ran, nothing loaded


def test_kill_9_mid_rollout_resumes_without_duplicates_or_gaps(tmp_path, monkeypatch,
                                                               one_thread) -> None:
    (tmp_path / "roll.yaml").write_text(RECIPE)
    monkeypatch.chdir(tmp_path)
    settings = ["--set", "stages.rollout.n_questions=16",
                "--set", "stages.rollout.generation.batch_size=1",
                "--set", "stages.rollout.generation.max_new_tokens=24"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "llm_recipe", "run", "roll.yaml", "--only",
                             "rollout", "-q", *settings], cwd=tmp_path, env=env,
                            start_new_session=True)
    checkpoints = tmp_path / STAGE / "checkpoints"
    latest = checkpoints / "latest"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if latest.exists() and json.loads(latest.read_text())["step"] >= 2:
            break
        assert proc.poll() is None, "the rollout ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(latest.read_text())["step"]
    assert 2 <= killed_at < 16 and not (tmp_path / STAGE / "manifest.json").exists()
    before = {k: rows_of(checkpoints / f"checkpoint-{k}" / "records.jsonl")
              for k in range(1, killed_at + 1)}
    plan = compile_recipe("roll.yaml", overrides=[settings[1], settings[3], settings[5]])
    assert plan.stage("rollout").status["state"] == "partial"
    damaged = checkpoints / "checkpoint-1" / "records.jsonl"
    damaged.write_text(damaged.read_text()[:-20])

    resumed = outcomes("--only", "rollout", *settings)
    assert resumed["rollout"]["action"] == "resumed"
    rows = rows_of(tmp_path / STAGE / "rollouts.jsonl")
    ids = [r["question_id"] for r in rows]
    assert len(ids) == 16 and len(set(ids)) == 16 and ids == sorted(ids)
    for k, records in before.items():  # batch k is question k (batch_size 1)
        assert [rows[k - 1]] == records  # checkpoint-1 was generated again, identically
    log = (tmp_path / STAGE / "train.log").read_text()
    assert "checkpoint-1 is damaged" in log and "batch 1 is generated again" in log
    steps = [r["step"] for r in read_metrics(tmp_path / STAGE) if r["phase"] == "rollout"]
    assert sorted(steps) == list(range(1, 17))  # one row per batch, none twice
