"""Reward functions, one registry for rollout scoring, GRPO and PPO.

Every function has trl's reward-function signature, ``fn(prompts, completions,
**columns) -> list[float]``: ``columns`` are the prompt dataset's other fields, one
value per completion (``answer`` for GSM8K rows). The same callables therefore serve
``GRPOTrainer(reward_funcs=...)``, the PPO loop and the rollout stage's per-trajectory
scores, and "correct" means what the eval stage means by it
(:func:`llm_recipe.runtime.metrics.gsm8k_correct`).

Built in (names the recipe schema accepts):

- ``gsm8k_correctness``: 1 when the completion's final answer equals the reference's.
- ``format``: 1 when the completion states its answer as ``#### <number>``.
- ``quality``: a reasoning-quality score in [0, 1]: the share of the completion's
  arithmetic statements (``a op b = c``) that are true, scaled by how many steps it
  shows (full credit from :data:`QUALITY_STEPS` checked steps). A solution that writes
  its working out and gets the arithmetic right scores high whatever its final answer,
  which is what separates two correct trajectories of unequal quality (the Abel pipeline's
  quality pairs).
- ``length_penalty``: minus the completion's length in words over
  :data:`LENGTH_SCALE`, capped at -1, so shorter is better when all else is equal.

Anything else is ``module:function``, imported from the recipe's folder (the
function must accept ``prompts, completions, **kwargs`` and return one float per
completion). Pure Python, no torch: unit-tested on hand-written completions.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from llm_recipe.errors import RecipeError
from llm_recipe.runtime.metrics import ANSWER_MARK, gsm8k_correct, parse_numbers

RewardFn = Callable[..., list[float]]
LENGTH_SCALE = 256
"""Words at which the length penalty reaches its floor of -1."""
QUALITY_STEPS = 3
"""Checked arithmetic steps for a full quality score."""
_EQUATION = re.compile(
    r"(?P<a>-?\d[\d,]*(?:\.\d+)?)\s*(?P<op>[-+*/x×÷])\s*(?P<b>-?\d[\d,]*(?:\.\d+)?)"
    r"\s*=\s*(?P<c>-?\d[\d,]*(?:\.\d+)?)")
_FORMAT = re.compile(re.escape(ANSWER_MARK) + r"\s*-?\$?\d")


def completion_text(completion: Any) -> str:
    """A completion as text: trl passes strings, or message lists for chat datasets."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


def gsm8k_correctness(prompts: Sequence[Any], completions: Sequence[Any], *,
                      answer: Sequence[str], **_: Any) -> list[float]:
    return [float(gsm8k_correct(completion_text(c), a)[2])
            for c, a in zip(completions, answer, strict=True)]


def format_reward(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
    return [float(bool(_FORMAT.search(completion_text(c)))) for c in completions]


def length_penalty(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
    return [-min(1.0, len(completion_text(c).split()) / LENGTH_SCALE) for c in completions]


def quality(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
    return [quality_score(completion_text(c)) for c in completions]


def quality_score(text: str) -> float:
    """Share of true ``a op b = c`` statements, times min(1, checked / QUALITY_STEPS)."""
    checked = right = 0
    for match in _EQUATION.finditer(text):
        value = _apply(match["a"], match["op"], match["b"])
        if value is None:
            continue
        checked += 1
        numbers = parse_numbers(match["c"])  # "12,3" is two numbers as people write them
        claimed = numbers[0] if numbers else None
        right += claimed is not None and abs(value - claimed) <= Decimal("1e-6") * max(
            Decimal(1), abs(value))
    if checked == 0:
        return 0.0
    return right / checked * min(1.0, checked / QUALITY_STEPS)


def _apply(a: str, op: str, b: str) -> Decimal | None:
    try:
        x, y = Decimal(a.replace(",", "")), Decimal(b.replace(",", ""))
    except InvalidOperation:
        return None
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op in "*x×":
        return x * y
    return x / y if y != 0 else None


BUILTIN: dict[str, RewardFn] = {
    "gsm8k_correctness": gsm8k_correctness,
    "format": format_reward,
    "quality": quality,
    "length_penalty": length_penalty,
}
"""Built-in reward functions by the names recipes use (schema: ``$defs/reward_fn``)."""
NEEDS_ANSWER = frozenset({"gsm8k_correctness"})
"""Built-ins that read the reference answer (the prompts must carry it)."""


def resolve(name: str, base_dir: Path) -> RewardFn:
    """A reward function by name: a built-in, or ``module:function`` from ``base_dir``.

    A module file next to the recipe (``rewards.py`` for ``rewards:my_reward``) is
    loaded from that file under a name of its own, so two recipes with a ``rewards.py``
    each never share one; the recipe's folder is on ``sys.path`` only while it loads (for
    its own imports of sibling files). Anything else is an installed module.
    """
    if name in BUILTIN:
        return BUILTIN[name]
    module_name, _, function = name.partition(":")
    if not function:
        raise RecipeError(f"unknown reward function '{name}'",
                          expected=f"one of {', '.join(BUILTIN)}, or module:function")
    folder = base_dir.resolve()
    try:
        module = _import(module_name, folder)
    except Exception as exc:  # the user's module may raise anything while importing
        raise RecipeError(f"reward function '{name}': module {module_name} does not import "
                          f"({type(exc).__name__}: {exc})",
                          hint=f"the module is looked up next to the recipe, in {folder}"
                          ) from None
    found = getattr(module, function, None)
    if not callable(found):
        raise RecipeError(f"reward function '{name}': {module_name} has no function "
                          f"'{function}'", hint="define it as "
                          f"def {function}(prompts, completions, **kwargs) -> list[float]")
    return found


def _import(module_name: str, folder: Path) -> Any:
    relative = Path(*module_name.split("."))
    for file in (folder / relative.with_suffix(".py"), folder / relative / "__init__.py"):
        if not file.is_file():
            continue
        unique = f"_recipe_{hashlib.sha256(str(file).encode()).hexdigest()[:12]}_" + (
            module_name.replace(".", "_"))
        if unique in sys.modules:
            return sys.modules[unique]
        spec = importlib.util.spec_from_file_location(unique, file)
        if spec is None or spec.loader is None:
            break
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(folder))
        try:
            sys.modules[unique] = module
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(unique, None)
            raise
        finally:
            sys.path.remove(str(folder))
        return module
    return importlib.import_module(module_name)


class WeightedRewards:
    """A weighted sum of reward functions, keeping each component for logging."""

    def __init__(self, specs: Sequence[tuple[str, float]], base_dir: Path) -> None:
        self.names = [name for name, _ in specs]
        self.weights = [float(weight) for _, weight in specs]
        self.functions = [resolve(name, base_dir) for name in self.names]

    def components(self, prompts: Sequence[Any], completions: Sequence[Any],
                   **columns: Sequence[Any]) -> dict[str, list[float]]:
        """Each function's raw scores, by name; checked to be one float per completion."""
        out = {}
        for name, function in zip(self.names, self.functions, strict=True):
            scores = [float(s) for s in function(prompts=list(prompts),
                                                 completions=list(completions), **columns)]
            if len(scores) != len(completions):
                raise RecipeError(f"reward function '{name}' returned {len(scores)} scores "
                                  f"for {len(completions)} completions")
            out[name] = scores
        return out

    def total(self, components: dict[str, list[float]]) -> list[float]:
        """The weighted sum of :meth:`components`' scores, per completion."""
        columns = [components[name] for name in self.names]
        return [sum(w * c[i] for w, c in zip(self.weights, columns, strict=True))
                for i in range(len(columns[0]) if columns else 0)]

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                 **columns: Sequence[Any]) -> list[float]:
        return self.total(self.components(prompts, completions, **columns))
