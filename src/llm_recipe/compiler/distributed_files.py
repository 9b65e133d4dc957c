"""Your own DeepSpeed JSON or FSDP settings file, passed through to accelerate.

``compute.distributed.deepspeed_config: configs/ds.json`` (strategy deepspeed) and
``compute.distributed.fsdp_config: configs/fsdp.yaml`` (strategy fsdp) are how users of
Axolotl (``deepspeed: deepspeed_configs/zero3.json``, ``fsdp_config:``), TRL and
LLaMA-Factory bring a tuned setup along. What goes wrong with such a file goes wrong
late and far away (a JSON typo, a ZeRO stage that contradicts the recipe, a batch size
DeepSpeed refuses at step 0 on a cluster), so this module reads it at plan time:

- the file exists, is at most 1 MB, parses (a parse error names the file and its line)
  and holds a mapping; a DeepSpeed file has ``zero_optimization.stage``;
- the values the HF Trainer would refuse as mismatches (``train_micro_batch_size_per_gpu``,
  ``gradient_accumulation_steps``, ``train_batch_size``, ``gradient_clipping``, the
  optimizer's lr/betas/eps/weight_decay, ``bf16``/``fp16`` ``enabled``) agree with the
  recipe, or are ``"auto"``; a missing ``gradient_accumulation_steps`` counts as 1 (what
  accelerate sets);
- an FSDP file names only settings accelerate knows (the ``fsdp_`` prefix may be left
  out) and does not turn on FSDP's activation checkpointing next to the Trainer's;
- the launcher is accelerate (directly or inside docker): the only one that takes them.

The plan keeps the path (relative to the working directory) and the file's sha256
(``<key>_sha256``), which the stage's fingerprint covers, and for FSDP the settings
themselves (``fsdp_settings``), so ``recipe render`` stays a pure function of the plan.
A DeepSpeed file's ZeRO stage and offload fill ``zero_stage``/``offload`` when the recipe
does not say them, so the estimate follows the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from llm_recipe.compiler import world
from llm_recipe.compiler.load import load_yaml
from llm_recipe.compiler.reading import read_bytes
from llm_recipe.compiler.rules import mapping_at
from llm_recipe.compiler.source import SourceMap
from llm_recipe.errors import Location, RecipeError, RecipePath

DEEPSPEED = "deepspeed_config"
FSDP = "fsdp_config"
KEYS = (DEEPSPEED, FSDP)
STRATEGY = {DEEPSPEED: "deepspeed", FSDP: "fsdp"}

FSDP_SETTINGS = frozenset({
    "fsdp_activation_checkpointing", "fsdp_auto_wrap_policy", "fsdp_backward_prefetch",
    "fsdp_cpu_ram_efficient_loading", "fsdp_forward_prefetch", "fsdp_min_num_params",
    "fsdp_offload_params", "fsdp_reshard_after_forward", "fsdp_sharding_strategy",
    "fsdp_state_dict_type", "fsdp_sync_module_states", "fsdp_transformer_layer_cls_to_wrap",
    "fsdp_use_orig_params", "fsdp_version", "fsdp_activation_checkpointing_offload",
})
"""The fsdp_config keys ``accelerate launch`` reads (its --fsdp_* options, accelerate 1.x)."""


class FileProblem(Exception):
    """What is wrong with a config file: a message, and where in the file when known."""

    def __init__(self, message: str, *, location: Location | None = None,
                 snippet: str | None = None, expected: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.location, self.snippet = message, location, snippet
        self.expected, self.hint = expected, hint


def shown(path: Path, cwd: Path) -> str:
    """How messages name a file: relative to the working directory."""
    return Path(os.path.relpath(path if path.is_absolute() else cwd / path, cwd)).as_posix()


def read_config(key: str, path: Path, name: str) -> tuple[dict[str, Any], str, SourceMap | None]:
    """(settings, sha256 of the bytes, source map of a YAML file) or :class:`FileProblem`.

    A DeepSpeed file is JSON (what DeepSpeed reads); an FSDP file is YAML (what accelerate
    configs are), read under the recipe loader's rules.
    """
    what = "DeepSpeed config" if key == DEEPSPEED else "FSDP settings file"
    if not path.exists():
        raise FileProblem(f"the {what} {name} does not exist",
                          hint="the path is relative to the recipe file that names it")
    try:
        raw = read_bytes(path, name)
    except RecipeError as exc:
        raise FileProblem(f"the {what} {name}: {exc.message}") from None
    sha = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FileProblem(f"the {what} {name} is not UTF-8 text") from None
    if key == DEEPSPEED:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            lines = SourceMap()
            lines.add_text(name, text)
            location = Location(name, exc.lineno, exc.colno)
            raise FileProblem(
                f"the {what} {name} is not valid JSON: line {exc.lineno}, column {exc.colno}: "
                f"{exc.msg}", location=location, snippet=lines.snippet(location),
                hint="DeepSpeed reads JSON: no comments, no trailing commas") from None
        where = None
    else:
        try:
            data, where = load_yaml(text, name)
        except RecipeError as exc:
            line = f"line {exc.location.line}: " if exc.location else ""
            raise FileProblem(f"the {what} {name} is not valid YAML: {line}{exc.message}",
                              location=exc.location, snippet=exc.snippet,
                              hint=exc.hint) from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise FileProblem(f"the {what} {name} is {kind}", expected="a mapping of settings")
    return data, sha, where


def fsdp_settings(data: dict[str, Any], where: SourceMap | None) -> dict[str, Any]:
    """An FSDP file's settings, keys with their ``fsdp_`` prefix; the mapping under a
    top-level ``fsdp_config:`` when the file is a whole accelerate config."""
    prefix: RecipePath = ()
    if set(data) >= {"fsdp_config"} and isinstance(data["fsdp_config"], dict):
        data, prefix = data["fsdp_config"], ("fsdp_config",)
    out: dict[str, Any] = {}
    for key, value in data.items():
        full = key if str(key).startswith("fsdp_") else f"fsdp_{key}"
        if full not in FSDP_SETTINGS:
            import difflib

            close = difflib.get_close_matches(full, sorted(FSDP_SETTINGS), n=1)
            location = where.locate((*prefix, key), key=True) if where else None
            raise FileProblem(
                f"unknown FSDP setting '{key}'", location=location,
                snippet=where.snippet(location) if where else None,
                expected="one of: " + ", ".join(sorted(FSDP_SETTINGS)),
                hint=f"did you mean '{close[0]}'?" if close else
                "accelerate ignores settings it does not know, so this one would do nothing")
        if isinstance(value, dict):
            raise FileProblem(f"FSDP setting '{key}' is a mapping",
                              expected="a value or a list of values")
        out[full] = value
    return out


def derived(key: str, settings: dict[str, Any]) -> dict[str, Any]:
    """What the file says about ``zero_stage`` and ``offload`` (for the plan and estimate)."""
    if key == FSDP:
        return {"offload": "parameters"} if settings.get("fsdp_offload_params") is True else {}
    zero = settings.get("zero_optimization") or {}
    out: dict[str, Any] = {}
    if isinstance(zero.get("stage"), int):
        out["zero_stage"] = zero["stage"]
    params = (zero.get("offload_param") or {}).get("device")
    optim = (zero.get("offload_optimizer") or {}).get("device")
    out["offload"] = ("parameters" if params in ("cpu", "nvme") else
                      "optimizer" if optim in ("cpu", "nvme") else "none")
    return out


def deepspeed_problems(settings: dict[str, Any], compute: dict[str, Any],
                       train: dict[str, Any] | None) -> list[FileProblem]:
    """Values of a DeepSpeed file the HF Trainer would refuse as mismatches at step 0."""
    problems: list[FileProblem] = []
    zero = settings.get("zero_optimization")
    if not isinstance(zero, dict) or zero.get("stage") not in (0, 1, 2, 3):
        problems.append(FileProblem(
            "has no zero_optimization.stage (0, 1, 2 or 3)",
            expected='"zero_optimization": {"stage": 2, ...}',
            hint="accelerate refuses a DeepSpeed config without one"))
    written = (compute.get("distributed") or {}).get("zero_stage")
    if isinstance(zero, dict) and written is not None and zero.get("stage") in (0, 1, 2, 3) \
            and zero["stage"] != written:
        problems.append(FileProblem(
            f"says ZeRO stage {zero['stage']} and the recipe says zero_stage {written}",
            expected="the same stage in both", hint="leave zero_stage out: the file's is used"))
    if train is None:
        return problems
    mode = world.precision_mode(compute)
    batch, accum = int(train["batch_size"]), int(train["grad_accum"])
    expected: list[tuple[str, Any, str]] = [
        ("train_micro_batch_size_per_gpu", batch, "train.batch_size"),
        ("gradient_accumulation_steps", accum, "train.grad_accum"),
        ("train_batch_size", batch * accum * world.replicas(compute),
         "train.batch_size x grad_accum x processes"),
        ("gradient_clipping", float(train["max_grad_norm"]), "train.max_grad_norm"),
        ("optimizer.params.lr", float(train["lr"]), "train.lr"),
        ("optimizer.params.weight_decay", float(train["weight_decay"]), "train.weight_decay"),
        ("optimizer.params.betas", [0.9, 0.999], "the trainer's AdamW betas"),
        ("optimizer.params.eps", 1e-8, "the trainer's AdamW eps"),
        ("bf16.enabled", mode == "bf16-mixed", f"compute.precision ({mode})"),
        ("fp16.enabled", mode == "fp16-mixed", f"compute.precision ({mode})"),
    ]
    for dotted, want, source in expected:
        found, value = _lookup(settings, dotted)
        if dotted == "gradient_accumulation_steps" and not found:
            found, value = True, 1  # accelerate fills a missing one with 1
        if not found or value == "auto" or value is None:
            continue
        if not _same(value, want):
            problems.append(FileProblem(
                f"says {dotted} = {json.dumps(value)}, and the trainer will use "
                f"{json.dumps(want)} ({source}); the HF Trainer refuses the mismatch",
                expected=f'"{dotted.rsplit(".", 1)[-1]}": "auto", or {json.dumps(want)}',
                hint='write "auto" and the recipe\'s value is filled in'
                + (" (accelerate treats a missing gradient_accumulation_steps as 1)"
                   if dotted == "gradient_accumulation_steps" else "")))
    return problems


def _lookup(settings: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = settings
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _same(value: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(value, bool):
        return value is want or (not isinstance(value, bool) and value == want)
    if isinstance(want, list):
        return isinstance(value, list) and len(value) == len(want) and all(
            _same(v, w) for v, w in zip(value, want, strict=True))
    if isinstance(value, int | float) and isinstance(want, int | float):
        return abs(float(value) - float(want)) <= 1e-12 * max(1.0, abs(float(want)))
    return bool(value == want)


def config_file_errors(data: dict[str, Any], where: SourceMap, cwd: Path) -> list[RecipeError]:
    """Every problem with a stage's DeepSpeed/FSDP config file, located in the recipe (or,
    for a line of the file, in the file)."""
    from llm_recipe.compiler.kinds import KINDS_BY_NAME
    from llm_recipe.compiler.plan import merged_compute, stage_config

    errors: list[RecipeError] = []
    stages = mapping_at(data, "stages")
    reported: set[tuple[str, str]] = set()
    for name, stage in stages.items():
        if not isinstance(stage, dict) or stage.get("kind") not in KINDS_BY_NAME:
            continue
        own = (stage.get("compute") or {}).get("distributed") or {}
        recipe = (data.get("compute") or {}).get("distributed") or {}
        for key in KEYS:
            if key not in own and key not in recipe:
                continue
            at: RecipePath = (("stages", name, "compute", "distributed", key) if key in own
                              else ("compute", "distributed", key))
            compute = merged_compute(data.get("compute"), stage.get("compute"),
                                     local=KINDS_BY_NAME[stage["kind"]].local)
            path = resolve_path(where, at, str(own.get(key, recipe.get(key))), cwd)
            label = shown(path, cwd)
            strategy = compute["distributed"].get("strategy")
            if strategy != STRATEGY[key]:
                errors.append(where.error(
                    at, f"stage {name} uses strategy {strategy}; {key} is for "
                    f"{STRATEGY[key]}", expected=f"distributed.strategy: {STRATEGY[key]}",
                    hint=f"set strategy: {STRATEGY[key]}, or remove {key}"))
                continue
            launcher = compute["launcher"]
            inner = world.inner_launcher(compute) if launcher == "docker" else launcher
            if inner != "accelerate":
                errors.append(where.error(
                    at, f"stage {name} is launched with {launcher}"
                    + (f" ({inner} inside)" if launcher == "docker" else "")
                    + f"; only accelerate takes a {STRATEGY[key]} config file",
                    expected="compute.launcher: accelerate (or docker.launcher: accelerate)",
                    hint="launch the stage with accelerate"))
                continue
            try:
                settings, _, fsdp_where = read_config(key, path, label)
                if key == FSDP:
                    settings = fsdp_settings(settings, fsdp_where)
            except FileProblem as problem:
                if (label, problem.message) not in reported:
                    reported.add((label, problem.message))
                    errors.append(_error(where, at, problem))
                continue
            kind = KINDS_BY_NAME[stage["kind"]]
            if key == DEEPSPEED:
                train = stage_config(stage, 0).get("train") if kind.trains else None
                for problem in deepspeed_problems(settings, compute, train):
                    problem.message = f"{label} {problem.message}"
                    errors.append(_error(where, at, problem))
            elif settings.get("fsdp_activation_checkpointing") is True and compute[
                    "distributed"].get("activation_checkpointing") is not False:
                errors.append(where.error(
                    at, f"{label} turns on FSDP's activation checkpointing, and stage {name} "
                    "also has the Trainer's (distributed.activation_checkpointing "
                    f"{compute['distributed'].get('activation_checkpointing')})",
                    expected="one of the two", hint="set distributed.activation_checkpointing:"
                    " false to keep FSDP's (transformers refuses both)"))
    return errors


def resolve_path(where: SourceMap, at: RecipePath, value: str, cwd: Path) -> Path:
    """A path from the recipe: relative to the file that wrote it (``--set``: ``cwd``)."""
    path = Path(value)
    if path.is_absolute():
        return path
    location = where.locate(at)
    if location is None or location.file.startswith("--set"):
        return cwd / path
    anchor = Path(location.file).parent
    return (anchor if anchor.is_absolute() else cwd / anchor) / path


def _error(where: SourceMap, at: RecipePath, problem: FileProblem) -> RecipeError:
    """A file problem located in the file when its line is known, else at the recipe key."""
    if problem.location is not None:
        return RecipeError(problem.message, location=problem.location, path=at,
                           expected=problem.expected, hint=problem.hint or
                           "fix the file; the recipe names it at "
                           f"{where.locate(at) or 'its compute section'}",
                           snippet=problem.snippet)
    return where.error(at, problem.message, expected=problem.expected,
                       hint=problem.hint or "fix the file, or point the setting at another")


def plan_settings(key: str, path: Path, cwd: Path) -> dict[str, Any]:
    """What the plan records beside the path: the sha256 and, for FSDP, the settings.

    Called on a recipe that passed :func:`config_file_errors`, so the file reads.
    """
    settings, sha, fsdp_where = read_config(key, path, shown(path, cwd))
    out: dict[str, Any] = {f"{key}_sha256": sha}
    if key == FSDP:
        out["fsdp_settings"] = fsdp_settings(settings, fsdp_where)
        out["_derived"] = derived(key, out["fsdp_settings"])
    else:
        out["_derived"] = derived(key, settings)
    return out
