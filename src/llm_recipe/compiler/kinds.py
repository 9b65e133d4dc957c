"""What the compiler knows about each stage kind, without importing the runtime.

A kind's parameters live in the schema (``$defs/stage_<kind>``); this module says
what a kind consumes and produces, which is what lineage checking needs. The
runtime has one module per kind under ``runtime/stages/``; a unit test keeps
the three lists (schema, this registry, runtime modules) in sync.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Artifact types flowing along lineage edges.
MODEL = "model"  # full weights (HF format)
ADAPTER = "adapter"  # peft adapter on a base model
PATCH = "patch"  # continual-learning patch on a frozen base model
DATASET = "dataset"  # rows of one format
REPORT = "report"  # evaluation results

TEXT = "text"
PROMPT_COMPLETION = "prompt_completion"
MESSAGES = "messages"
GSM8K = "gsm8k"
PREFERENCE = "preference"
ROLLOUTS = "rollouts"


@dataclass(frozen=True)
class Input:
    """One input field of a stage: where it is in the stage config and what it accepts.

    ``field`` is a path pattern: ``data``, ``models[]`` (every list item),
    ``phases[].data`` (a key of every list item), ``reward.model``.
    """

    field: str
    accepts: frozenset[str]
    formats: frozenset[str] = frozenset()
    required: bool = True
    describe: str = ""

    def expected(self) -> str:
        """Human text for an error: 'a dataset of format preference'."""
        if self.describe:
            return self.describe
        parts = []
        for kind in sorted(self.accepts):
            if kind == DATASET and self.formats:
                parts.append(f"a dataset of format {' or '.join(sorted(self.formats))}")
            else:
                parts.append(f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}")
        return " or ".join(parts)


def _data(field: str, *formats: str, required: bool = True) -> Input:
    return Input(field, frozenset({DATASET}), frozenset(formats), required)


def _model(field: str, *, required: bool = True, patch: bool = False) -> Input:
    accepts = {MODEL, ADAPTER} | ({PATCH} if patch else set())
    return Input(field, frozenset(accepts), required=required)


@dataclass(frozen=True)
class Kind:
    """A stage kind as the compiler sees it."""

    name: str
    inputs: tuple[Input, ...]
    output: Callable[[dict[str, Any], dict[str, str]], str]
    """(stage config, artifact type of each single-valued input field) -> output artifact type."""
    output_file: Callable[[str], str]
    trains: bool
    policy_field: str | None = None
    """The input whose weights the stage trains or samples from (lineage base)."""
    version: int = 1
    """Bump when the runtime's behaviour changes, so existing outputs become stale."""
    local: bool = False
    """Needs no accelerator: always runs as one local process, whatever the compute says."""


def _trained(config: dict[str, Any], inputs: dict[str, str]) -> str:
    """Training stages produce an adapter when asked for one or when continuing one.

    dpo's ``policy_adapter: merge`` merges the policy's adapter into its base, trains a
    new one and merges that too, so it writes full weights.
    """
    if config.get("policy_adapter") == "merge":
        return MODEL
    policy = inputs.get("policy") or inputs.get("model")
    return ADAPTER if config.get("adapter") or policy == ADAPTER else MODEL


def _fixed(artifact: str) -> Callable[[dict[str, Any], dict[str, str]], str]:
    return lambda _config, _inputs: artifact


def _output_file(artifact: str) -> str:
    return {
        MODEL: "model",
        ADAPTER: "adapter",
        PATCH: "patch",
        DATASET: "data.jsonl",
        REPORT: "report.json",
    }[artifact]


SFT_FORMATS = (PROMPT_COMPLETION, MESSAGES, GSM8K, TEXT)
PROMPT_FORMATS = (GSM8K, PROMPT_COMPLETION)

KINDS: tuple[Kind, ...] = (
    Kind(
        "pretrain",
        (
            Input("model", frozenset({MODEL})),
            _data("data", TEXT),
            _data("validation", TEXT, required=False),
        ),
        _fixed(MODEL),
        _output_file,
        trains=True,
        policy_field="model",
    ),
    Kind(
        "sft",
        (
            _model("model"),
            _data("data", *SFT_FORMATS),
            _data("validation", *SFT_FORMATS, required=False),
        ),
        _trained,
        _output_file,
        trains=True,
        policy_field="model",
    ),
    Kind(
        "rollout",
        (_model("policy"), _data("prompts", GSM8K, PROMPT_COMPLETION, MESSAGES)),
        _fixed(DATASET),
        lambda _artifact: "rollouts.jsonl",
        trains=False,
        policy_field="policy",
    ),
    Kind(
        "preferences",
        (_data("rollouts", ROLLOUTS),),
        _fixed(DATASET),
        lambda _artifact: "preferences.jsonl",
        trains=False,
        local=True,
    ),
    Kind(
        "reward_model",
        (
            _model("model"),
            _data("data", PREFERENCE),
            _data("validation", PREFERENCE, required=False),
        ),
        _trained,
        _output_file,
        trains=True,
        policy_field="model",
    ),
    Kind(
        "dpo",
        (_model("policy"), _model("reference", required=False), _data("data", PREFERENCE)),
        _trained,
        _output_file,
        trains=True,
        policy_field="policy",
    ),
    Kind(
        "grpo",
        (_model("policy"), _data("prompts", *PROMPT_FORMATS)),
        _trained,
        _output_file,
        trains=True,
        policy_field="policy",
    ),
    Kind(
        "ppo",
        (
            _model("policy"),
            _data("prompts", *PROMPT_FORMATS),
            Input("reward.model", frozenset({MODEL, ADAPTER}), required=False),
            Input("value_model", frozenset({MODEL}), required=False),
        ),
        _trained,
        _output_file,
        trains=True,
        policy_field="policy",
    ),
    Kind(
        "eval",
        (_model("models[]", patch=True), _data("data", GSM8K, PROMPT_COMPLETION, TEXT, MESSAGES)),
        _fixed(REPORT),
        _output_file,
        trains=False,
    ),
    Kind(
        "continual",
        (
            Input("model", frozenset({MODEL})),
            _data("phases[].data", TEXT),
            _data("probes[].data", TEXT, required=False),
        ),
        _fixed(PATCH),
        _output_file,
        trains=True,
        policy_field="model",
    ),
)

KINDS_BY_NAME: dict[str, Kind] = {kind.name: kind for kind in KINDS}

DATASET_OUTPUT_FORMAT = {"rollout": ROLLOUTS, "preferences": PREFERENCE}
"""The row format of stages that produce datasets."""

METRIC_FORMATS = {
    "gsm8k_accuracy": frozenset({GSM8K}),
    "exact_match": frozenset({GSM8K, PROMPT_COMPLETION}),
    "perplexity": frozenset({TEXT, PROMPT_COMPLETION, GSM8K, MESSAGES}),
}
"""Which dataset formats each eval metric can be computed on."""
