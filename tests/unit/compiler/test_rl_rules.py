"""Plan-time rules of the preference and RL stages (the cases folders hold the messages)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_recipe.compiler import compile_recipe
from llm_recipe.compiler.rl_rules import BUILTIN_REWARDS, module_function_problem
from llm_recipe.errors import RecipeError
from llm_recipe.runtime.rl.rewards import BUILTIN

HEAD = """\
recipe: 1
name: rl
models:
  base:
    init: {architecture: llama, size: nano}
    tokenizer: {train: {data: corpus, vocab_size: 300}}
datasets:
  corpus: {builtin: corpus, format: text}
  math: {builtin: arithmetic, format: gsm8k}
stages:
  sft: {kind: sft, model: base, data: math, adapter: {type: lora}, train: {max_steps: 2}}
  rollout: {kind: rollout, policy: sft, prompts: math}
  prefs: {kind: preferences, rollouts: rollout}
"""


def test_the_compiler_knows_the_runtime_reward_functions() -> None:
    assert set(BUILTIN_REWARDS) == set(BUILTIN)


@pytest.mark.parametrize(("dpo", "error"), [
    ("{kind: dpo, policy: sft, reference: sft, data: prefs}", None),
    ("{kind: dpo, policy: sft, data: prefs, policy_adapter: merge, adapter: {type: lora}}",
     None),
    ("{kind: dpo, policy: sft, data: prefs, adapter: {type: lora}}",
     "is an adapter, which this stage continues as it is"),
    ("{kind: dpo, policy: base, data: prefs, policy_adapter: merge, adapter: {type: lora}}",
     "policy_adapter: merge needs a policy that is an adapter"),
])
def test_dpo_policy_adapter_follows_the_policy_lineage(write, dpo: str, error: str | None) -> None:
    path = write(HEAD + f"  dpo: {dpo}\n")
    if error is None:
        plan = compile_recipe(path)
        merged = plan.stage("dpo").config.get("policy_adapter") == "merge"
        assert plan.stage("dpo").output.type == ("model" if merged else "adapter")
        return
    with pytest.raises(RecipeError, match=error):
        compile_recipe(path)


def test_grpo_batch_counts_every_process(write) -> None:
    grpo = ("  rl: {kind: grpo, policy: base, prompts: math, num_generations: 4,\n"
            "       train: {max_steps: 2, batch_size: 2},\n"
            "       compute: {launcher: torchrun, processes_per_node: 2}}\n")
    compile_recipe(write(HEAD + grpo))  # 2 x 1 x 2 processes = 4
    with pytest.raises(RecipeError, match=r"grad_accum 1 x 1 process\(es\) = 2 completions"):
        compile_recipe(write(HEAD + grpo.replace("processes_per_node: 2", "processes_per_node: 1")))


def test_a_module_is_read_never_run(tmp_path: Path) -> None:
    (tmp_path / "r.py").write_text("raise SystemExit('ran')\ndef good(prompts, completions):\n"
                                   "    return []\n")
    assert module_function_problem("r", "good", tmp_path) is None
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("def __getattr__(name):\n    return None\n")
    assert module_function_problem("pkg", "anything", tmp_path) is None
    (tmp_path / "bad.py").write_text("def broken(:\n")
    assert "bad.py:1:" in module_function_problem("bad", "broken", tmp_path)
    assert module_function_problem("json", "dumps", tmp_path) is None  # installed


def test_ppo_runs_as_one_process_and_generates_with_transformers(write) -> None:
    ppo = ("  rl: {kind: ppo, policy: base, prompts: math,\n"
           "       reward: {functions: [{function: format}]}, train: {max_steps: 2}}\n")
    plan = compile_recipe(write(HEAD + ppo))
    assert plan.stage("rl").estimate["generation_backend"] == "transformers"
    spread = ppo.replace("train: {max_steps: 2}}",
                         "train: {max_steps: 2},\n       compute: {launcher: torchrun, "
                         "processes_per_node: 2}}")
    with pytest.raises(RecipeError, match="runs as one process, and its compute starts 2"):
        compile_recipe(write(HEAD + spread))
