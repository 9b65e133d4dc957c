"""Rules for the preference and RL stages that need lineage, compute or the filesystem.

Checked after resolve, with every other error, so ``recipe plan`` and ``recipe
validate`` refuse what a run would only find out at step 1 (or hours in):

- a reward function that is neither built in nor ``module:function`` (with "did you
  mean"), and a ``module:function`` whose file is not next to the recipe, does not
  parse, or defines no such function: read with :mod:`ast`, never imported, so
  planning runs none of the user's code and never imports torch;
- a custom rollout variant whose template has no ``{question}``, or a repeated name;
- dpo's ``policy_adapter`` against the policy's lineage type and ``adapter:``;
- PPO under more than one process (the runtime's PPO is one process);
- GRPO at temperature 0 (identical completions in a group, nothing to learn);
- GRPO's rule that the generation batch (per-device batch x accumulation x
  processes, trl's default) is a multiple of ``num_generations``, with the numbers;
- a preferences stage over rollouts with fewer than two trajectories per question,
  which can make no pair at all.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import re
from pathlib import Path
from typing import Any

from llm_recipe.compiler import world
from llm_recipe.compiler.kinds import ADAPTER
from llm_recipe.compiler.plan import merged_compute
from llm_recipe.compiler.resolve import Resolution
from llm_recipe.compiler.rules import mapping_at
from llm_recipe.compiler.source import SourceMap
from llm_recipe.errors import RecipeError

BUILTIN_REWARDS = ("gsm8k_correctness", "format", "length_penalty", "quality")
"""Reward functions of runtime/rl/rewards.py (a unit test keeps the two in sync)."""
BUILTIN_VARIANTS = ("direct", "reflective", "deliberative")
MODULE_FUNCTION = re.compile(
    r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<function>[A-Za-z_]\w*)$")
MAX_MODULE_BYTES = 1_000_000


def rl_errors(data: dict[str, Any], resolution: Resolution, where: SourceMap,
              recipe_dir: Path) -> list[RecipeError]:
    """Every error of the rules above, for every stage."""
    stages = mapping_at(data, "stages")
    errors: list[RecipeError] = []
    for name, stage in stages.items():
        if not isinstance(stage, dict):
            continue
        at = ("stages", name)
        kind = stage.get("kind")
        if kind == "grpo":
            errors += _reward_errors(stage.get("rewards"), (*at, "rewards"), where, recipe_dir)
            errors += _grpo_batch_errors(data, stage, at, where)
            errors += _greedy_group_errors(stage, at, where)
        elif kind == "ppo":
            reward = mapping_at(stage, "reward")
            errors += _reward_errors(reward.get("functions"), (*at, "reward", "functions"),
                                     where, recipe_dir)
            errors += _ppo_process_errors(data, stage, at, where)
        elif kind == "rollout":
            errors += _variant_errors(stage.get("variants"), (*at, "variants"), where)
        elif kind == "dpo":
            errors += _dpo_adapter_errors(stage, at, resolution, where)
        elif kind == "preferences":
            errors += _preferences_errors(stages, stage, at, where)
    return errors


def _reward_errors(specs: Any, at: tuple, where: SourceMap,
                   recipe_dir: Path) -> list[RecipeError]:
    errors = []
    for index, spec in enumerate(specs if isinstance(specs, list) else []):
        name = spec.get("function") if isinstance(spec, dict) else None
        if not isinstance(name, str) or name in BUILTIN_REWARDS:
            continue
        path = (*at, index, "function")
        match = MODULE_FUNCTION.match(name)
        if match is None:
            close = difflib.get_close_matches(name, BUILTIN_REWARDS, n=1)
            errors.append(where.error(
                path, f"unknown reward function '{name}'",
                expected=f"one of {', '.join(BUILTIN_REWARDS)}, or module:function",
                hint=f"did you mean {close[0]}?" if close else
                "write your own as module:function in a .py file next to the recipe"))
            continue
        problem = module_function_problem(match["module"], match["function"], recipe_dir)
        if problem:
            errors.append(where.error(
                path, f"reward function '{name}': {problem}",
                expected="def " + match["function"] + "(prompts, completions, **kwargs) "
                "-> list[float] in " + match["module"].replace(".", "/") + ".py",
                hint=f"modules are looked up next to the recipe ({recipe_dir}), then among "
                "installed packages"))
    return errors


def module_function_problem(module: str, function: str, recipe_dir: Path) -> str | None:
    """Why ``module:function`` cannot be used, found without running the module."""
    relative = Path(*module.split("."))
    candidates = (recipe_dir / relative.with_suffix(".py"), recipe_dir / relative / "__init__.py")
    for candidate in candidates:
        if candidate.is_file():
            return _defines(candidate, function)
    top = module.split(".")[0]
    try:
        installed = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        installed = False
    if installed:
        return None  # an installed package: checked when the stage imports it
    return f"module {module} is not next to the recipe ({relative.with_suffix('.py')}) " \
        "nor installed"


def _defines(file: Path, function: str) -> str | None:
    try:
        with file.open("rb") as handle:
            source = handle.read(MAX_MODULE_BYTES + 1)
    except OSError as exc:
        return f"cannot read {file}: {exc.strerror}"
    if len(source) > MAX_MODULE_BYTES:
        return f"{file} is over {MAX_MODULE_BYTES:,} bytes"
    try:
        tree = ast.parse(source, filename=str(file))
    except SyntaxError as exc:
        return f"{file}:{exc.lineno}: {exc.msg}"
    except ValueError as exc:  # NUL bytes
        return f"{file}: {exc}"
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    if function in names or "__getattr__" in names:
        return None
    close = difflib.get_close_matches(function, sorted(names), n=1)
    return f"{file} defines no '{function}'" + (f" (did you mean {close[0]}?)" if close else "")


def _variant_errors(variants: Any, at: tuple, where: SourceMap) -> list[RecipeError]:
    errors = []
    seen: set[str] = set()
    for index, variant in enumerate(variants if isinstance(variants, list) else []):
        name = variant if isinstance(variant, str) else (
            variant.get("name") if isinstance(variant, dict) else None)
        if isinstance(variant, dict):
            template = variant.get("template")
            if isinstance(template, str) and "{question}" not in template:
                errors.append(where.error(
                    (*at, index, "template"), f"variant '{name}' never shows the question",
                    expected="a template containing {question}",
                    hint="e.g. template: \"Solve carefully.\\n{question}\\nAnswer:\""))
            if name in BUILTIN_VARIANTS:
                errors.append(where.error(
                    (*at, index, "name"), f"'{name}' is a built-in variant",
                    expected="a new name", hint="list built-ins by name, without a template"))
        if isinstance(name, str) and name in seen:
            errors.append(where.error((*at, index), f"variant '{name}' is listed twice",
                                      hint="each variant is sampled once per question"))
        if isinstance(name, str):
            seen.add(name)
    return errors


def _dpo_adapter_errors(stage: dict[str, Any], at: tuple, resolution: Resolution,
                        where: SourceMap) -> list[RecipeError]:
    policy = resolution.artifacts.get(stage.get("policy"))  # type: ignore[arg-type]
    mode = stage.get("policy_adapter", "continue")
    is_adapter = policy is not None and policy.type == ADAPTER
    if mode == "merge" and not is_adapter:
        return [where.error((*at, "policy_adapter"), "policy_adapter: merge needs a policy "
                            "that is an adapter", expected="policy_adapter: continue (or omit it)",
                            hint=f"'{stage.get('policy')}' is full weights: nothing to merge")]
    if mode == "merge" and "adapter" not in stage:
        return [where.error((*at, "policy_adapter"), "policy_adapter: merge trains a new "
                            "adapter on the merged model, and `adapter:` says none",
                            expected="an adapter block, e.g. adapter: {type: lora, r: 16}",
                            hint="or policy_adapter: continue, to keep training the policy's "
                            "own adapter")]
    if mode == "continue" and is_adapter and "adapter" in stage:
        return [where.error(
            (*at, "adapter"), f"the policy '{stage.get('policy')}' is an adapter, which this "
            "stage continues as it is; a new `adapter:` would be ignored",
            expected="no adapter block, or policy_adapter: merge",
            hint="policy_adapter: merge merges the policy's adapter and trains this new one",
            key=True)]
    return []


def _processes(data: dict[str, Any], stage: dict[str, Any]) -> int:
    return world.processes(merged_compute(data.get("compute"), stage.get("compute")))


def _ppo_process_errors(data: dict[str, Any], stage: dict[str, Any], at: tuple,
                        where: SourceMap) -> list[RecipeError]:
    processes = _processes(data, stage)
    if processes == 1:
        return []
    return [where.error(
        (*at, "compute") if "compute" in stage else at,
        f"the ppo stage runs as one process, and its compute starts {processes}",
        expected="one process (launcher local, or processes_per_node: 1 on one node)",
        hint=f"add compute: {{launcher: local}} to stages.{at[-1]}; a larger policy fits "
        "one GPU with an adapter")]


def _grpo_batch_errors(data: dict[str, Any], stage: dict[str, Any], at: tuple,
                       where: SourceMap) -> list[RecipeError]:
    train = mapping_at(stage, "train")
    batch, accum = int(train.get("batch_size", 8)), int(train.get("grad_accum", 1))
    generations = int(stage.get("num_generations", 4))
    processes = _processes(data, stage)
    total = batch * accum * processes
    if total % generations == 0:
        return []
    fits = next(b for b in range(batch, batch + generations + 1)
                if b * accum * processes % generations == 0)
    return [where.error(
        (*at, "num_generations"),
        f"GRPO samples num_generations={generations} completions per prompt, and a step "
        f"generates batch_size {batch} x grad_accum {accum} x {processes} process(es) = "
        f"{total} completions, which is not a multiple of {generations}",
        expected=f"a generation batch divisible by {generations}",
        hint=f"e.g. train.batch_size: {fits}, or a num_generations that divides {total}")]


def _greedy_group_errors(stage: dict[str, Any], at: tuple,
                         where: SourceMap) -> list[RecipeError]:
    generation = mapping_at(stage, "generation")
    if generation.get("temperature", 1.0) != 0:
        return []
    return [where.error(
        (*at, "generation", "temperature"),
        "GRPO compares num_generations completions of each prompt, and at temperature 0 "
        "they are all the same: every advantage is 0 and nothing is learned",
        expected="a temperature > 0 (trl's default is 1.0)",
        hint="e.g. temperature: 0.9")]


def _preferences_errors(stages: dict[str, Any], stage: dict[str, Any], at: tuple,
                        where: SourceMap) -> list[RecipeError]:
    producer = stages.get(stage.get("rollouts"))  # type: ignore[arg-type]
    if not isinstance(producer, dict) or producer.get("kind") != "rollout":
        return []
    variants = producer.get("variants") or ["direct"]
    per_question = len(variants) * int(producer.get("samples_per_variant", 4))
    if per_question >= 2:
        return []
    return [where.error(
        (*at, "rollouts"), f"rollout stage '{stage.get('rollouts')}' samples {per_question} "
        "trajectory per question, and a preference pair needs two of the same question",
        expected="rollouts with variants x samples_per_variant >= 2",
        hint=f"raise stages.{stage.get('rollouts')}.samples_per_variant or add variants")]
