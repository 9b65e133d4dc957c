"""The README.md model card of an exported stage (``recipe export``): torch-free text.

An exported folder leaves the workspace: uploaded to the Hub, copied to a server, found
a year later. Its card is what still says where it came from: the recipe (name, file,
profiles, overrides), the stage and its kind, the fingerprint of the output on disk (the
manifest's, so ``recipe status`` can tell whether a workspace still holds the same
output), the lineage down to the ``models:`` entry it started from, the training
settings and metrics the manifest recorded, and how to load it.

Nothing secret is written: a value that is an ``${env:NAME}`` reference (or holds one),
a secret-looking key, ``push_to_hub`` and ``tracking`` (their values are where secrets
live) and the stage's ``compute`` are left out. The text is built from plain data (the
plan, the manifests) so unit tests check it without torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_recipe.compiler.plan import Plan, StagePlan
from llm_recipe.compiler.source import SECRET_KEY
from llm_recipe.compiler.status import read_manifest
from llm_recipe.runtime.integrity import stage_path

FULL, MERGED, ADAPTER = "full", "merged", "adapter"
"""What an export holds: a full model as the stage saved it, an adapter merged into its
base, or the adapter alone."""

_NOT_SETTINGS = frozenset({"kind", "description", "after", "compute", "tracking",
                           "push_to_hub"})
"""Top-level stage keys that are not training settings (or may hold secrets)."""
_PLUMBING = frozenset({"train.dataloader_workers", "train.keep_checkpoints", "train.log_every",
                       "train.save_every", "train.eval_every"})
"""Settings that do not change the weights (how often to log and save)."""
_QLORA_ONLY = frozenset({"adapter.quant_type", "adapter.double_quant"})
_MODEL_TYPES = ("model", "adapter", "patch")
_MAX_VALUE = 120
"""A setting longer than this is cut (a long prompt template would drown the card)."""


@dataclass(frozen=True)
class CardFacts:
    """What the card says beyond the stage and its manifest."""

    out: str
    """The export folder as the user named it (the load snippet's path)."""
    content: str
    """:data:`FULL`, :data:`MERGED` or :data:`ADAPTER`."""
    notes: tuple[str, ...] = ()
    """Sentences about how the export was made (a dequantised base, a stale output)."""


def has_secret(value: Any) -> bool:
    """Whether a value is or holds an ``${env:NAME}`` reference (never written out)."""
    if isinstance(value, str):
        return "${env:" in value
    if isinstance(value, dict):
        return any(has_secret(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_secret(v) for v in value)
    return False


def safe_overrides(overrides: Sequence[str]) -> list[str]:
    """``--set`` values fit for a card: none with an env reference or a secret-looking key."""
    kept = []
    for item in overrides:
        path = item.split("=", 1)[0]
        if has_secret(item) or any(SECRET_KEY.search(part) for part in path.split(".")):
            continue
        kept.append(item)
    return kept


def training_settings(config: dict[str, Any], input_fields: Sequence[str] = ()) -> list[
        tuple[str, str]]:
    """(dotted key, value) of the settings that made the weights: inputs, secret-bearing
    blocks, logging/saving cadence and QLoRA's quantisation keys on a LoRA adapter left out.

    ``input_fields`` are the config keys that name inputs (model, data...): the lineage
    says those. Nested mappings are flattened (``train.lr``); lists are written inline.
    """
    skip = _NOT_SETTINGS | {field.split(".")[0].split("[")[0] for field in input_fields}
    adapter = config.get("adapter")
    hidden = _PLUMBING | (_QLORA_ONLY if not isinstance(adapter, dict)
                          or adapter.get("type") != "qlora" else frozenset())
    return [(key, value) for key, value in _flatten(config, "")
            if key.split(".")[0] not in skip and key not in hidden]


def _flatten(node: dict[str, Any], prefix: str) -> Iterator[tuple[str, str]]:
    for key in sorted(node):
        value, path = node[key], f"{prefix}{key}"
        if SECRET_KEY.search(str(key)) or has_secret(value) or value is None:
            continue
        if isinstance(value, dict):
            yield from _flatten(value, path + ".")
            continue
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str) \
            if not isinstance(value, str) else value
        yield path, text if len(text) <= _MAX_VALUE else text[:_MAX_VALUE - 1] + "…"


def root_model(plan: Plan, stage: StagePlan) -> tuple[str, dict[str, Any]] | None:
    """The ``models:`` entry the stage's model chain starts from (name, entry)."""
    seen: set[str] = set()
    current: StagePlan | None = stage
    while current is not None and current.name not in seen:
        seen.add(current.name)
        item = next((i for i in current.inputs
                     if i.field == "model" and i.type in _MODEL_TYPES), None)
        if item is None:
            return None
        if item.ref in plan.models:
            return item.ref, plan.models[item.ref]
        if item.type == "adapter" and item.base in plan.models:
            return item.base, plan.models[item.base]
        current = next((s for s in plan.stages if s.name == (item.producer or item.ref)), None)
    return None


def hub_base(plan: Plan, stage: StagePlan) -> str | None:
    """The Hub id the stage's model descends from (a card's ``base_model``), if any."""
    found = root_model(plan, stage)
    return found[1].get("hub") if found else None


def describe_entry(entry: dict[str, Any], *, dataset: bool = False) -> str:
    """A models: or datasets: entry in a few words (where it comes from, no secrets)."""
    if "hub" in entry:
        revision = entry.get("revision")
        return f"Hub `{entry['hub']}`" + (f" at `{revision}`" if revision else "")
    if "path" in entry:
        return f"local path `{entry['path']}`"
    if "init" in entry:
        init = entry["init"]
        shape = " ".join(str(init[k]) for k in ("architecture", "size") if k in init)
        return f"random init ({shape})" if shape else "random init"
    if "builtin" in entry:
        return f"builtin `{entry['builtin']}`" + (f", {entry['n']} rows" if "n" in entry else "")
    if "mixture" in entry or "mix" in entry:
        return "a mixture of datasets"
    return "a dataset" if dataset else "a model"


def adapter_base(plan: Plan, stage: StagePlan, root: Path) -> str:
    """Where an adapter's base is: a models: entry, or the folder of the stage that made it."""
    name = stage.output.base or ""
    if name in plan.models:
        return f"`{name}`, {describe_entry(plan.models[name])}"
    producer = next((s for s in plan.stages if s.name == name), None)
    if producer is None:
        return f"`{name}`"
    return f"`{name}`, the output of stage `{name}` at `{stage_path(root, producer.output.path)}`"


def lineage(plan: Plan, stage: StagePlan, root: Path, manifest: dict[str, Any] | None = None,
            depth: int = 0, seen: frozenset[str] = frozenset()) -> list[str]:
    """Markdown list lines: what the stage was trained from, down to models: and datasets:.

    Fingerprints are those the manifests recorded (what the output on disk was made
    from), else the plan's.
    """
    lines: list[str] = []
    pad = "  " * depth
    items = _inputs(stage, manifest)
    for item in items:
        ref, field, kind, fingerprint = (item.get(k) for k in ("ref", "field", "type",
                                                                "fingerprint"))
        short = f", fingerprint `{str(fingerprint)[:12]}`" if fingerprint else ""
        if ref in plan.models:
            lines.append(f"{pad}- {field}: `{ref}` (models: {describe_entry(plan.models[ref])})")
        elif ref in plan.datasets:
            what = describe_entry(plan.datasets[ref], dataset=True)
            lines.append(f"{pad}- {field}: `{ref}` (datasets: {what}{short})")
        elif ref in {s.name for s in plan.stages} and ref not in seen:
            producer = plan.stage(ref)
            lines.append(f"{pad}- {field}: `{ref}` ({producer.kind} stage, "
                         f"{_output_words(str(kind or producer.output.type))}{short})")
            upstream = read_manifest(stage_path(root, producer.dir))
            lines.extend(lineage(plan, producer, root, upstream, depth + 1,
                                 seen | {stage.name}))
        else:
            lines.append(f"{pad}- {field}: `{ref}`{short}")
    return lines


def _inputs(stage: StagePlan, manifest: dict[str, Any] | None) -> list[dict[str, Any]]:
    recorded = (manifest or {}).get("inputs")
    if isinstance(recorded, list) and all(isinstance(i, dict) for i in recorded):
        return recorded
    return [{"ref": i.ref, "field": i.field, "type": i.type, "fingerprint": i.fingerprint}
            for i in stage.inputs]


def _output_words(kind: str) -> str:
    return {"model": "full weights", "adapter": "adapter", "patch": "continual patch",
            "dataset": "dataset", "metrics": "metrics"}.get(kind, kind)


def load_snippet(out: str, content: str, kind: str) -> list[str]:
    """The few lines of Python that load the export (a classifier for a reward model)."""
    head = "SequenceClassification" if kind == "reward_model" else "CausalLM"
    path = json.dumps(out)
    if content == ADAPTER:
        return [f"from peft import AutoPeftModelFor{head}",
                "from transformers import AutoTokenizer",
                f"model = AutoPeftModelFor{head}.from_pretrained({path})  # base: "
                "adapter_config.json",
                f"tokenizer = AutoTokenizer.from_pretrained({path})"]
    return [f"from transformers import AutoModelFor{head}, AutoTokenizer",
            f"model = AutoModelFor{head}.from_pretrained({path})",
            f"tokenizer = AutoTokenizer.from_pretrained({path})"]


def model_card(plan: Plan, stage: StagePlan, root: Path, manifest: dict[str, Any],
               facts: CardFacts) -> str:
    """The README.md text: YAML front matter, then the recipe, stage, lineage, settings,
    metrics and a load snippet."""
    recipe = plan.recipe
    base = hub_base(plan, stage)
    library = "peft" if facts.content == ADAPTER else "transformers"
    front = ["---", f"library_name: {library}"]
    if base:
        front.append(f"base_model: {json.dumps(base)}")
    front += ["tags:", "- llm-recipe", f"- {stage.kind}"]
    if facts.content == ADAPTER:
        front.append("- lora")
    front.append("---")

    fingerprint = str(manifest.get("fingerprint") or stage.fingerprint)
    what = {FULL: "the full model, as the stage saved it",
            MERGED: "the full model: the stage's adapter merged into its base",
            ADAPTER: "the adapter only (load it on its base)"}[facts.content]
    lines = [*front, "", f"# {recipe['name']} / {stage.name}", ""]
    description = recipe.get("description")
    if isinstance(description, str) and description and not has_secret(description):
        lines += [description.strip(), ""]
    lines += [
        f"Exported by `recipe export` from stage `{stage.name}` of the llm-recipe recipe "
        f"`{recipe['name']}`: {what}.", "",
        f"- recipe: `{recipe['name']}` (file `{_relative(recipe['file'], root)}`)",
        f"- stage: `{stage.name}` (kind `{stage.kind}`, output: "
        f"{_output_words(stage.output.type)})",
        f"- fingerprint: `{fingerprint}`",
        f"- profiles: {_code_list(recipe.get('profiles') or [])}",
        f"- overrides: {_code_list(safe_overrides(recipe.get('overrides') or []))}",
    ]
    if facts.content == ADAPTER and stage.output.base:
        lines.append(f"- base model (needed to load it): {adapter_base(plan, stage, root)}")
    if manifest.get("steps") is not None:
        lines.append(f"- steps: {manifest['steps']}")
    finished = (manifest.get("timings") or {}).get("finished")
    if finished:
        lines.append(f"- trained: {finished}")
    for note in facts.notes:
        lines += ["", f"> {note}"]

    lines += ["", "## Lineage", ""]
    lines.append(f"- `{stage.name}` ({stage.kind} stage, "
                 f"{_output_words(stage.output.type)}, fingerprint `{fingerprint[:12]}`)")
    lines += lineage(plan, stage, root, manifest, depth=1)

    config = manifest.get("config") if isinstance(manifest.get("config"), dict) \
        else stage.config
    fields = [i.get("field", "") for i in _inputs(stage, manifest)]
    settings = training_settings(config, fields)
    if settings:
        lines += ["", "## Training settings", "", "| setting | value |", "| --- | --- |"]
        lines += [f"| `{key}` | {_cell(value)} |" for key, value in settings]

    metrics = {k: v for k, v in (manifest.get("metrics") or {}).items()
               if isinstance(v, int | float | str) and not has_secret(v)}
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| `{k}` | {_number(v)} |" for k, v in sorted(metrics.items())]

    lines += ["", "## How to load", "", "```python",
              *load_snippet(facts.out, facts.content, stage.kind), "```", ""]
    return "\n".join(lines)


def _relative(file: str, root: Path) -> str:
    """The recipe file as seen from the working directory (no home folder in the card)."""
    path = Path(file)
    return str(path.relative_to(root)) if path.is_absolute() and path.is_relative_to(root) \
        else file


def _code_list(items: Sequence[str]) -> str:
    return ", ".join(f"`{item}`" for item in items) if items else "none"


def _cell(text: str) -> str:
    """A table cell: pipes escaped, newlines flattened."""
    return "`" + text.replace("|", "\\|").replace("\n", " ").replace("`", "'") + "`"


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
