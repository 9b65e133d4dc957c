"""The rollout stage without torch: scoring of real GSM8K-style text, question sampling,
prompt variants, backend choice, and the batch/checkpoint/resume logic driven by a fake
generator (the real one runs in tests/integration/test_stage_rollout.py)."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import textwrap
from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.errors import RecipeError
from llm_recipe.runtime.checkpoints import pointer_step
from llm_recipe.runtime.context import StageContext
from llm_recipe.runtime.data import PROMPT_TEMPLATE, check_rows, read_jsonl
from llm_recipe.runtime.log import StageLog, read_metrics
from llm_recipe.runtime.rl import prompts
from llm_recipe.runtime.rl.generation import Completion, batch_seed, choose_backend
from llm_recipe.runtime.rl.prompts import (
    DELIBERATIVE,
    REFLECTIVE,
    Question,
    Variant,
    build_variants,
    questions_of,
    select_questions,
)
from llm_recipe.runtime.rl.rewards import WeightedRewards
from llm_recipe.runtime.stages import rollout
from llm_recipe.runtime.stages.rollout import score_batch

ROOT = Path(__file__).resolve().parents[3]

# GSM8K train, question 1 (the reference with its calculator annotations).
NATALIA = Question(0, "Natalia sold clips to 48 of her friends in April, and then she sold "
                   "half as many clips in May. How many clips did Natalia sell altogether "
                   "in April and May?",
                   "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
                   "<<48+24=72>>72 clips altogether in April and May.\n#### 72")
# GSM8K train, question 3 (thousands, dollars and a decimal along the way).
BETTY = Question(1, "Betty is saving money for a new wallet which costs $100. ...",
                 "In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\nBetty's "
                 "grandparents gave her 15 * 2 = $<<15*2=30>>30.\nThis means, Betty needs "
                 "100 - 50 - 30 - 15 = $<<100-50-30-15=5>>5 more.\n#### 5")


def test_scoring_reads_gsm8k_answers_as_eval_does() -> None:
    rewards = WeightedRewards([("gsm8k_correctness", 1.0), ("quality", 0.5),
                               ("length_penalty", 0.1), ("format", 0.2)], Path("."))
    variants = [Variant("direct", PROMPT_TEMPLATE, True)]
    completions = [[
        Completion(" Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips "
                   "altogether in April and May.\n#### 72", 30),
        Completion(" In May she sold 24 clips, so 72 clips in total.", 12),
        Completion(" 48 + 24 = 70\n#### 70\n\nQuestion: 12 + 3 = 15 #### 15", 20),
    ], [
        Completion(" She has 100 / 2 = 50. Gifts: 15 * 2 = 30. So 50 - 30 = 20 and "
                   "20 - 15 = 5 more.\n#### $5.00", 31),
        Completion(" #### 1,005", 4),
        Completion(" I do not know.", 5),
    ]]
    rows = score_batch([NATALIA, BETTY], variants, ["p0", "p1"], completions, rewards)
    assert [r["reference_answer"] for r in rows] == ["72", "5"]
    natalia, betty = rows[0]["samples"], rows[1]["samples"]
    assert [(s["answer"], s["correct"]) for s in natalia] == [
        ("72", True), ("72", True), ("70", False)]  # only the first '####' counts
    assert [(s["answer"], s["correct"]) for s in betty] == [
        ("5", True), ("1005", False), (None, False)]
    first = natalia[0]
    assert first["components"]["correctness"] == 1.0 and first["components"]["format"] == 1.0
    assert first["components"]["quality"] == pytest.approx(2 / 3)  # two true steps of three
    words = len(first["full_text"].split())
    assert first["components"]["length_penalty"] == pytest.approx(-words / 256)
    assert first["reward"] == pytest.approx(1.0 + 0.5 * 2 / 3 - 0.1 * words / 256 + 0.2)
    assert natalia[1]["components"]["format"] == 0.0
    assert betty[0]["components"]["quality"] == 1.0
    assert [s["num_tokens"] for s in natalia] == [30, 12, 20]
    assert set(first) == {"variant", "sample", "prompt", "full_text", "answer", "num_tokens",
                          "correct", "reward", "components"}
    check_rows(rows, "rollouts", "batch")


def test_questions_are_a_seeded_sample_in_dataset_order() -> None:
    questions = [Question(i, f"q{i}", f"#### {i}") for i in range(50)]
    picked = select_questions(questions, 10, seed=42)
    ids = [q.id for q in picked]
    assert len(ids) == 10 and ids == sorted(ids)
    assert ids == [q.id for q in select_questions(questions, 10, seed=42)]
    assert ids != [q.id for q in select_questions(questions, 10, seed=43)]
    assert ids != list(range(10))  # not simply the first ten
    assert select_questions(questions, None, 1) == questions
    assert select_questions(questions, 80, 1) == questions


def test_questions_of_each_prompt_format() -> None:
    chat = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "2+2?"},
                         {"role": "assistant", "content": "#### 4"}]}
    (q,) = questions_of([chat], "messages")
    assert (q.text, q.reference, q.history) == ("2+2?", "#### 4",
                                                ({"role": "system", "content": "Be brief."},))
    (p,) = questions_of([{"prompt": "3+3=", "completion": " 6"}], "prompt_completion")
    assert (p.text, p.reference, p.history) == ("3+3=", " 6", None)


class ChatTokenizer:
    """A tokenizer whose chat template writes the BOS token, as Llama's and Mistral's do."""

    chat_template = "..."
    bos_token = "<s>"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        return "<s>" + "".join(f"[{m['role']}] {m['content']} " for m in messages) + "[assistant]"


def test_chat_rows_are_rendered_with_the_chat_template() -> None:
    (question,) = questions_of([{"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "#### 4"}]}], "messages")
    direct, reflective = build_variants(["direct", "reflective"], "{question}")
    # No BOS in the text: tokenizing the prompt adds it once.
    assert prompts.render(direct, question, ChatTokenizer()) == (
        "[system] Be brief. [user] 2+2? [assistant]")
    assert prompts.render(reflective, question, ChatTokenizer()) == (
        f"[system] Be brief. [user] {REFLECTIVE}\n\n2+2? [assistant]")
    assert prompts.render(direct, question, None) == "2+2?"  # no chat template: as text


def test_builtin_variants_wrap_the_policys_own_prompt() -> None:
    direct, reflective, deliberative, custom = build_variants(
        ["direct", "reflective", "deliberative",
         {"name": "json", "template": 'Reply as {"answer": n}. {question}'}], PROMPT_TEMPLATE)
    question = "Kai buys 2 bags with 9 cookies in each bag. How many cookies does Kai buy?"
    assert direct.render(question) == f"Question: {question}\nAnswer:"
    assert reflective.render(question) == f"{REFLECTIVE}\n\nQuestion: {question}\nAnswer:"
    assert deliberative.render(question) == f"{DELIBERATIVE}\n\nQuestion: {question}\nAnswer:"
    assert custom.render(question) == f'Reply as {{"answer": n}}. {question}'  # braces kept


def test_direct_is_what_sft_trained_the_policy_with() -> None:
    from llm_recipe.runtime.stages.sft import SftConfig, to_trl

    plan = compile_recipe(ROOT / "recipes" / "abel.yaml", profiles=["tiny"], cwd=ROOT)
    template, origin = prompts.direct_template(plan, "sft", "gsm8k")
    assert origin == "stages.sft.prompt_template"
    assert template == plan.stage("sft").config["prompt_template"]
    row = {"question": "Kai has 3 apples and buys 4 more. How many apples?", "answer": "#### 7"}
    trained = to_trl(row, "gsm8k", SftConfig.from_config(plan.stage("sft").config))["prompt"]
    (direct,) = build_variants(["direct"], template)
    assert direct.render(row["question"]) == trained
    # A dpo stage trained from sft samples with the same prompt; a bare model gets the default.
    assert prompts.direct_template(plan, "dpo", "gsm8k")[0] == template
    assert prompts.direct_template(plan, "abel", "gsm8k") == (
        PROMPT_TEMPLATE, "the sft default for gsm8k rows")


def test_batch_seeds_depend_on_seed_and_index_only() -> None:
    assert batch_seed(42, 3) == batch_seed(42, 3)
    assert len({batch_seed(42, i) for i in range(100)}) == 100
    assert batch_seed(42, 0) != batch_seed(43, 0)
    assert all(0 <= batch_seed(s, i) < 2**31 for s in range(5) for i in range(5))


def test_backend_choice() -> None:
    assert choose_backend("auto", 0, vllm_installed=True, cuda=True)[0] == "transformers"
    assert choose_backend("auto", 8, vllm_installed=False, cuda=True)[0] == "transformers"
    assert choose_backend("auto", 8, vllm_installed=True, cuda=False)[0] == "transformers"
    assert choose_backend("auto", 8, vllm_installed=True, cuda=True)[0] == "vllm"
    assert choose_backend("transformers", 8, vllm_installed=True, cuda=True)[0] == "transformers"
    with pytest.raises(RecipeError, match="vLLM is not installed") as caught:
        choose_backend("vllm", 8, stage="roll", vllm_installed=False, cuda=True)
    assert "stages.roll.generation.backend: transformers" in caught.value.hint
    with pytest.raises(RecipeError, match="needs a GPU"):
        choose_backend("vllm", 0, vllm_installed=True, cuda=True)


# --- the stage with a fake generator ------------------------------------------------


class Stop(Exception):
    """Stands for a kill in the middle of a run."""


class FakeGenerator:
    """Answers '#### <n>' with n drawn from the batch seed: right about 1 time in 8."""

    name = "fake"
    tokenizer = None

    def __init__(self, fail_after: int | None = None) -> None:
        self.seeds: list[int] = []
        self.fail_after = fail_after

    def generate(self, prompts, n, seed):
        if self.fail_after is not None and len(self.seeds) == self.fail_after:
            raise Stop
        self.seeds.append(seed)
        rng = random.Random(seed)
        return [[Completion(f" 2 * 9 = 18 #### {rng.randint(10, 50)}", 9) for _ in range(n)]
                for _ in prompts]

    def close(self) -> None:
        pass


def opener(fake: FakeGenerator, opened: list[str]):
    @contextlib.contextmanager
    def open_generator(ctx, backend, config):
        opened.append(backend)
        yield fake

    return open_generator


RECIPE = """\
recipe: 1
name: roll
seed: 5
models:
  m: {init: {architecture: llama, size: nano}, tokenizer: {train: {data: corpus, vocab_size: 300}}}
datasets:
  corpus: {builtin: corpus, n: 100, format: text}
  math: {builtin: arithmetic, split: train, n: 40, format: gsm8k}
stages:
  roll:
    kind: rollout
    policy: m
    prompts: math
    n_questions: 10
    variants: [direct, reflective, {name: terse, template: "{question} Answer with a number."}]
    samples_per_variant: 2
    generation: {max_new_tokens: 8, temperature: 1.0, batch_size: 3}
    rewards: {correctness: 1.0, quality: 0.5}
"""


def make_ctx(root: Path, resume_from: Path | None = None) -> StageContext:
    (root / "recipe.yaml").write_text(RECIPE)
    plan = compile_recipe(root / "recipe.yaml", cwd=root)
    stage = plan.stage("roll")
    return StageContext(plan, stage, root, StageLog(root / stage.dir, "roll"),
                        resume_from=resume_from)


def test_stage_writes_rows_summary_and_checkpoints(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    fake = FakeGenerator()
    result = rollout.collect(ctx, opener(fake, []))
    rows = read_jsonl(ctx.output_path)
    check_rows(rows, "rollouts", "rollouts.jsonl")
    assert len(rows) == 10 and len({r["question_id"] for r in rows}) == 10
    assert all(len(r["samples"]) == 3 * 2 for r in rows)
    assert [(s["variant"], s["sample"]) for s in rows[0]["samples"]] == [
        ("direct", 0), ("direct", 1), ("reflective", 0), ("reflective", 1), ("terse", 0),
        ("terse", 1)]
    assert rows[0]["samples"][0]["prompt"] == PROMPT_TEMPLATE.format(question=rows[0]["question"])
    assert rows[0]["samples"][4]["prompt"].endswith(" Answer with a number.")
    assert fake.seeds == [batch_seed(5, i) for i in range(4)]  # 10 questions, 3 per batch
    summary = json.loads((ctx.dir / "summary.json").read_text())
    assert set(summary["variants"]) == {"direct", "reflective", "terse"}
    assert summary["trajectories"] == 60 and summary["questions"] == 10
    assert summary["selection"] == "10 of 40 prompts, seeded sample (seed 5)"
    every = [s for r in rows for s in r["samples"]]
    assert summary["accuracy"] == sum(s["correct"] for s in every) / 60
    direct = [s for s in every if s["variant"] == "direct"]
    assert summary["variants"]["direct"]["mean_reward"] == pytest.approx(
        sum(s["reward"] for s in direct) / 20)
    assert result.key_metric == "accuracy" and result.steps == 4
    assert {"direct/accuracy", "reflective/mean_reward", "terse/accuracy"} <= set(result.metrics)
    assert pointer_step(ctx.checkpoints) == 4
    assert sorted(p.name for p in ctx.checkpoints.glob("checkpoint-*")) == [
        f"checkpoint-{k}" for k in range(1, 5)]
    assert [r["step"] for r in read_metrics(ctx.dir) if r["phase"] == "rollout"] == [1, 2, 3, 4]


def test_interrupted_run_resumes_and_regenerates_damaged_batches(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    whole.mkdir()
    reference = make_ctx(whole)
    rollout.collect(reference, opener(FakeGenerator(), []))
    expected = reference.output_path.read_text()

    ctx = make_ctx(tmp_path)
    with pytest.raises(Stop):
        rollout.collect(ctx, opener(FakeGenerator(fail_after=3), []))
    assert pointer_step(ctx.checkpoints) == 3 and not ctx.output_path.exists()
    records = ctx.checkpoints / "checkpoint-2" / "records.jsonl"
    records.write_text(records.read_text()[:-40])  # damaged after its save
    shutil.rmtree(ctx.checkpoints / "checkpoint-1")  # and one lost

    resumed = make_ctx(tmp_path, resume_from=ctx.checkpoints / "checkpoint-3")
    fake = FakeGenerator()
    rollout.collect(resumed, opener(fake, []))
    assert fake.seeds == [batch_seed(5, 0), batch_seed(5, 1), batch_seed(5, 3)]
    assert resumed.output_path.read_text() == expected
    log = (resumed.dir / "train.log").read_text()
    assert "checkpoint-1 is missing: batch 1 is generated again" in log
    assert "checkpoint-2 is damaged (records.jsonl has" in log
    assert pointer_step(ctx.checkpoints) == 4


def test_finished_checkpoints_are_written_out_without_loading_the_policy(tmp_path) -> None:
    ctx = make_ctx(tmp_path)
    rollout.collect(ctx, opener(FakeGenerator(), []))
    first = ctx.output_path.read_text()
    ctx.output_path.unlink()
    opened: list[str] = []
    again = make_ctx(tmp_path, resume_from=ctx.checkpoints / "checkpoint-4")
    rollout.collect(again, opener(FakeGenerator(), opened))
    assert opened == [] and again.output_path.read_text() == first


def test_checkpoint_of_other_questions_is_not_trusted(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    rollout.collect(ctx, opener(FakeGenerator(), []))
    one, two = (ctx.checkpoints / f"checkpoint-{k}" for k in (1, 2))
    (one / "records.jsonl").write_text((two / "records.jsonl").read_text())
    (one / "files.json").write_text((two / "files.json").read_text())
    fake = FakeGenerator()
    rollout.collect(make_ctx(tmp_path, resume_from=ctx.checkpoints / "checkpoint-4"),
                    opener(fake, []))
    assert fake.seeds == [batch_seed(5, 0)]
    assert "checkpoint-1 holds other questions" in (ctx.dir / "train.log").read_text()


def test_greedy_with_several_samples_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "recipe.yaml").write_text(RECIPE.replace("temperature: 1.0", "temperature: 0"))
    plan = compile_recipe(tmp_path / "recipe.yaml", cwd=tmp_path)
    stage = plan.stage("roll")
    ctx = StageContext(plan, stage, tmp_path, StageLog(tmp_path / stage.dir, "roll"))
    rollout.collect(ctx, opener(FakeGenerator(), []))
    log = (ctx.dir / "train.log").read_text()
    assert "temperature 0 is greedy" in log
    assert "stages.roll.generation.temperature" in log


def test_module_imports_no_torch() -> None:
    import subprocess
    import sys

    code = textwrap.dedent("""\
        import sys
        import llm_recipe.runtime.stages.rollout, llm_recipe.runtime.rl.generation
        import llm_recipe.runtime.rl.prompts, llm_recipe.runtime.rl.batches
        assert "torch" not in sys.modules
        """)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_vllm_generator_on_a_stand_in_vllm(monkeypatch) -> None:
    """The request shape vLLM gets (seeds, n, greedy repeats) and how outputs come back;
    the real engine needs a GPU, which this suite does not have."""
    import sys
    import types

    from llm_recipe.runtime.rl.generation import Sampling, VllmGenerator

    calls: dict = {}

    class Output:
        def __init__(self, text, token_ids):
            self.text, self.token_ids = text, token_ids

    class LLM:
        def __init__(self, **kwargs):
            calls["init"] = kwargs

        def get_tokenizer(self):
            return types.SimpleNamespace(eos_token_id=2)

        def generate(self, prompts, params, use_tqdm):
            calls["generate"] = (prompts, params)
            return [types.SimpleNamespace(outputs=[Output(f"{p}#{j}", [5] * (j + 1) + [2])
                                                   for j in range(sp.n)])
                    for p, sp in zip(prompts, params, strict=True)]

    vllm = types.ModuleType("vllm")
    vllm.LLM = LLM
    vllm.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", vllm)

    sampler = VllmGenerator("org/model", Sampling(16, 0.8, 0.9), seed=3, dtype="bfloat16",
                            revision="abc")
    out = sampler.generate(["a", "b"], 2, seed=100)
    assert [[c.text for c in o] for o in out] == [["a#0", "a#1"], ["b#0", "b#1"]]
    assert [[c.num_tokens for c in o] for o in out] == [[1, 2], [1, 2]]  # EOS not counted
    prompts, params = calls["generate"]
    assert prompts == ["a", "b"] and [p.seed for p in params] == [100, 101]
    assert all((p.n, p.max_tokens, p.temperature, p.top_p) == (2, 16, 0.8, 0.9)
               for p in params)
    assert (calls["init"]["model"], calls["init"]["revision"], calls["init"]["dtype"],
            calls["init"]["seed"], calls["init"]["tensor_parallel_size"]) == (
        "org/model", "abc", "bfloat16", 3, 1)

    greedy = VllmGenerator("org/model", Sampling(16), seed=3, dtype="bfloat16")
    out = greedy.generate(["a", "b"], 2, seed=0)
    prompts, params = calls["generate"]
    assert prompts == ["a", "a", "b", "b"] and all(p.n == 1 for p in params)
    assert [[c.text for c in o] for o in out] == [["a#0", "a#0"], ["b#0", "b#0"]]


def test_vllm_shards_over_the_gpus_of_a_single_process_stage() -> None:
    from llm_recipe.runtime.rl.generation import tensor_parallel_size

    assert tensor_parallel_size({"gpus_per_node": 4}) == 4  # launcher local by default
    assert tensor_parallel_size({"gpus_per_node": 4, "launcher": "local"}) == 4
    assert tensor_parallel_size({"gpus_per_node": 4, "launcher": "docker",
                                 "docker": {"launcher": "local"}}) == 4
    assert tensor_parallel_size({"gpus_per_node": 1}) == 1
    assert tensor_parallel_size({"gpus_per_node": 0}) == 1
    assert tensor_parallel_size({"gpus_per_node": 4, "launcher": "torchrun"}) == 1
    assert tensor_parallel_size({"gpus_per_node": 4, "launcher": "accelerate"}) == 1


def test_vllm_loads_full_weights_where_they_are_and_merges_the_rest(tmp_path) -> None:
    from llm_recipe.runtime.rl.generation import _on_disk

    ctx = make_ctx(tmp_path)
    assert _on_disk(ctx, ctx.input("policy")) is None  # init weights exist only in memory
    plan = compile_recipe(ROOT / "recipes" / "abel.yaml", cwd=ROOT)
    abel = StageContext(plan, plan.stage("rollout"), ROOT, StageLog(tmp_path, "rollout"))
    assert abel.input("policy").type == "adapter"
    assert _on_disk(abel, abel.input("policy")) is None  # merged into a temporary folder
    evaluation = StageContext(plan, plan.stage("eval"), ROOT, StageLog(tmp_path, "eval"))
    base = next(i for i in evaluation.inputs_under("models") if i.ref == "abel")
    assert _on_disk(evaluation, base) == {"model": "GAIR/Abel-7B-002", "revision": None,
                                         "tokenizer": None}
