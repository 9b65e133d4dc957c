"""Plan pass: a valid, resolved recipe -> the frozen Plan, the only contract with the runtime.

The Plan is plain data (JSON round-trips exactly): per stage the resolved config
with schema defaults filled, the merged compute section, typed inputs with their
lineage and paths, the output path, the launcher, the fingerprint, the status
against the workspace and the resource estimate. Paths in a plan are relative
to the directory ``recipe`` was run in (absolute ones stay absolute).

The Plan's data types live in :mod:`llm_recipe.compiler.plan_types` and are re-exported
here, so ``from llm_recipe.compiler.plan import Plan`` keeps working.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

from llm_recipe.compiler import architectures, distributed_files, estimate, mixtures
from llm_recipe.compiler.chat_templates import template_digest
from llm_recipe.compiler.fingerprint import digest, entry_fingerprint, stage_fingerprint
from llm_recipe.compiler.kinds import ADAPTER, DATASET, KINDS_BY_NAME, PATCH
from llm_recipe.compiler.mixtures import KNOWN_DATASET_SIZES
from llm_recipe.compiler.plan_types import PLAN_FORMAT, Plan, StageInput, StageOutput, StagePlan
from llm_recipe.compiler.resolve import Artifact, Resolution
from llm_recipe.compiler.schema import fill_defaults
from llm_recipe.compiler.source import SourceMap
from llm_recipe.compiler.stage_settings import (
    GENERATING_KINDS,
    LENGTH_KINDS,
    generation_backend,
    launcher_for,
    merged_compute,
    stage_config,
)
from llm_recipe.compiler.status import stage_status, with_blocked

__all__ = [  # the Plan types are re-exported from plan_types
    "GENERATING_KINDS", "KNOWN_DATASET_SIZES", "LENGTH_KINDS", "PLAN_FORMAT", "Plan",
    "StageInput", "StageOutput", "StagePlan", "build_plan", "generation_backend",
    "launcher_for", "stage_config",
]


def build_plan(
    data: dict[str, Any],
    resolution: Resolution,
    where: SourceMap,
    *,
    display: str,
    profiles: tuple[str, ...] = (),
    overrides: tuple[str, ...] = (),
    cwd: Path | None = None,
) -> Plan:
    """Build the Plan of a validated recipe (``data`` composed, ``resolution`` error-free).

    ``where`` tells which file each value was written in: a relative path is relative
    to the file that wrote it (a base file of ``extends``, or the recipe), while values
    from ``--set`` are relative to the working directory.
    """
    return _Planner(data, resolution, where, cwd or Path.cwd()).build(display, profiles, overrides)


class _Planner:
    def __init__(
        self, data: dict[str, Any], resolution: Resolution, where: SourceMap, cwd: Path
    ) -> None:
        self.raw = data
        self.where = where
        sections = {"models": {}, "datasets": {}, "compute": {}, "tracking": {}, "workspace": {}}
        self.data = fill_defaults({**sections, **{k: v for k, v in data.items() if k != "stages"}})
        self.resolution = resolution
        self.cwd = cwd
        self.warnings: list[str] = []
        self.fingerprints: dict[str, str] = {}
        self.outputs: dict[str, StageOutput] = {}
        self.root_model: dict[str, str] = {}
        self.adapters: dict[str, dict[str, Any]] = {}
        """Adapter config of every stage that produces an adapter (continued downstream)."""
        self.models = {n: self.entry(("models", n), e) for n, e in self.data["models"].items()}
        self.datasets = {
            n: self.entry(("datasets", n), e) for n, e in self.data["datasets"].items()
        }
        name = data["name"]
        self.workspace = self.rel(Path(self.data["workspace"]["root"]), self.cwd) + "/" + name

    def rel(self, path: Path, anchor: Path) -> str:
        """A path from the recipe, as seen from the working directory."""
        if path.is_absolute():
            return str(path)
        return os.path.relpath(anchor / path, self.cwd).replace(os.sep, "/")

    def anchor(self, path: tuple) -> Path:
        """The directory of the file that wrote the value at ``path``."""
        return self.where.anchor(path, self.cwd)

    def entry(self, at: tuple, entry: dict[str, Any]) -> dict[str, Any]:
        """A models:/datasets: entry with its paths made relative to the working directory."""
        out = copy.deepcopy(entry)
        if "path" in out:
            out["path"] = self.rel(Path(out["path"]), self.anchor((*at, "path")))
        tokenizer = out.get("tokenizer")
        if isinstance(tokenizer, dict) and "path" in tokenizer:
            where = self.anchor((*at, "tokenizer", "path"))
            tokenizer["path"] = self.rel(Path(tokenizer["path"]), where)
        return out

    def on_disk(self, path: str) -> Path:
        return Path(path) if Path(path).is_absolute() else self.cwd / path

    def build(self, display: str, profiles: tuple[str, ...], overrides: tuple[str, ...]) -> Plan:
        sources = [(n, e) for n, e in self.datasets.items() if not mixtures.is_mixture(e)]
        for name, entry in [*sources, *self.models.items()]:
            self.check_inside(name, entry)
            self.fingerprints[name] = entry_fingerprint(entry, self.cwd)
            template = template_digest((entry.get("tokenizer") or {}).get("chat_template"))
            if name in self.models and template is not None:
                # A named chat template is the registry's text: an edit there changes it.
                self.fingerprints[name] = digest([self.fingerprints[name], template])
            trained_on = ((entry.get("tokenizer") or {}).get("train") or {}).get("data")
            if name in self.models and trained_on in self.fingerprints:
                # A tokenizer trained here is part of the model: so is its data's content.
                self.fingerprints[name] = digest([self.fingerprints[name],
                                                  self.fingerprints[trained_on]])
            if name in self.models:
                self.root_model[name] = name
                self.check_revision(name, entry)
            elif "path" in entry and not self.on_disk(entry["path"]).exists():
                self.warnings.append(
                    f"dataset '{name}': {self.datasets[name]['path']} does not "
                    "exist yet; the stages reading it cannot run"
                )
        for name, entry in self.datasets.items():
            if mixtures.is_mixture(entry):  # its members' fingerprints, shares, seed, stopping
                self.datasets[name] = mixtures.plan_entry(entry, self.datasets, self.fingerprints)
                self.fingerprints[name] = mixtures.fingerprint(self.datasets[name])
        stages = tuple(self.stage(name, index) for index, name in enumerate(self.resolution.order))
        with_blocked({s.name: s.status for s in stages}, {s.name: s.upstream for s in stages})
        recipe = {
            "name": self.data["name"],
            "file": display,
            "description": self.data.get("description"),
            "profiles": list(profiles),
            "overrides": list(overrides),
            "seed": self.data["seed"],
            "fingerprint": digest([s.fingerprint for s in stages]),
        }
        return Plan(
            recipe=recipe,
            workspace=self.workspace,
            models=self.models,
            datasets=self.datasets,
            tracking=self.data["tracking"],
            stages=stages,
            env=tuple(sorted(_env_names(self.raw))),
            warnings=tuple(self.warnings),
        )

    def check_inside(self, name: str, entry: dict[str, Any]) -> None:
        """Warn when a local path reads from outside the project directory.

        Allowed (data often lives on a shared disk, as in DVC), but a recipe shared
        or reviewed by others should say so loudly: ``../../../../etc/passwd``, an
        absolute path, or a symlink in the project that points elsewhere all read
        files that are not part of the project, and that a launch on another machine
        may not have. The project directory is the working directory.
        """
        what = "model" if name in self.models else "dataset"
        tokenizer = entry.get("tokenizer")
        paths = [("path", entry.get("path"))]
        if isinstance(tokenizer, dict):
            paths.append(("tokenizer.path", tokenizer.get("path")))
        project = Path(os.path.realpath(self.cwd))
        for label, path in paths:
            if not isinstance(path, str):
                continue
            if Path(path).is_absolute():
                why = "an absolute path"
            elif os.path.normpath(path).split(os.sep)[0] == os.pardir:
                why = "it leaves the project with '..'"
            elif not Path(os.path.realpath(self.on_disk(path))).is_relative_to(project):
                why = f"a symlink to {os.path.realpath(self.on_disk(path))}"
            else:
                continue
            self.warnings.append(
                f"{what} '{name}': {label} {path} is outside the project directory ({why})"
            )

    def check_revision(self, name: str, entry: dict[str, Any]) -> None:
        if "hub" in entry and "revision" not in entry:
            self.warnings.append(
                f"model '{name}': revision not pinned; the plan cannot see "
                f"changes to {entry['hub']} on the hub"
            )

    def stage(self, name: str, index: int) -> StagePlan:
        raw = self.raw["stages"][name]
        kind = KINDS_BY_NAME[raw["kind"]]
        config = stage_config(raw, self.data["seed"])
        self.resume_path(name, config)
        compute = self.compute(raw.get("compute"), local=kind.local)
        self.config_files(name, raw, compute)
        artifact = self.resolution.artifacts[name]
        inputs = tuple(
            self.stage_input(edge.field, edge.path, edge.ref)
            for edge in self.resolution.edges.get(name, ())
        )
        fingerprint = stage_fingerprint(
            kind.name,
            kind.version,
            config,
            compute,
            {
                ".".join(map(str, i_path)): self.fingerprints[edge.ref]
                for i_path, edge in ((e.path, e) for e in self.resolution.edges.get(name, ()))
            },
        )
        self.fingerprints[name] = fingerprint
        stage_dir = f"{self.workspace}/{name}"
        output = StageOutput(
            type=artifact.type,
            path=f"{stage_dir}/{kind.output_file(artifact.type)}",
            format=artifact.format,
            base=artifact.base,
        )
        self.outputs[name] = output
        policy = config.get(kind.policy_field) if kind.policy_field else None
        if isinstance(policy, str):
            self.root_model[name] = self.root_model.get(policy, "")
            if artifact.type == ADAPTER:
                self.adapters[name] = config.get("adapter") or self.adapters.get(policy, {})
        return StagePlan(
            name=name,
            kind=kind.name,
            index=index,
            dir=stage_dir,
            config=config,
            compute=compute,
            launcher=launcher_for(compute),
            inputs=inputs,
            upstream=self.resolution.upstream.get(name, ()),
            output=output,
            fingerprint=fingerprint,
            status=stage_status(
                Path(stage_dir),
                fingerprint,
                config,
                self.cwd,
                {i.field: i.fingerprint for i in inputs},
            ),
            estimate=self.estimate(name, kind.name, config, compute, inputs),
        )

    def compute(self, override: dict[str, Any] | None, *, local: bool) -> dict[str, Any]:
        return merged_compute(self.raw.get("compute", {}), override, local=local)

    def resume_path(self, name: str, config: dict[str, Any]) -> None:
        """``train.resume_from``: a checkpoint path as seen from the working directory
        (``latest`` names the stage's own); a missing one is said now, refused at run time."""
        train = config.get("train") or {}
        value = train.get("resume_from")
        if not isinstance(value, str) or value == "latest":
            return
        at = ("stages", name, "train", "resume_from")
        train["resume_from"] = self.rel(Path(value), self.anchor(at))
        if not self.on_disk(train["resume_from"]).is_dir():
            self.warnings.append(f"stage '{name}': train.resume_from {train['resume_from']} "
                                 "is not a checkpoint folder yet; the stage cannot start "
                                 "until it is")

    def config_files(self, name: str, raw: dict[str, Any], compute: dict[str, Any]) -> None:
        """A DeepSpeed/FSDP config file in the stage's compute: its path as seen from the
        working directory, its sha256 (fingerprinted), FSDP's settings (rendered), and the
        ZeRO stage and offload it implies where the recipe does not say them."""
        distributed = compute["distributed"]
        own = ((raw.get("compute") or {}).get("distributed") or {})
        top = ((self.raw.get("compute") or {}).get("distributed") or {})
        for key in distributed_files.KEYS:
            if key not in distributed:
                continue
            at = (("stages", name, "compute", "distributed", key) if key in own
                  else ("compute", "distributed", key))
            distributed[key] = self.rel(Path(distributed[key]), self.anchor(at))
            extra = distributed_files.plan_settings(key, self.on_disk(distributed[key]),
                                                    self.cwd)
            implied = extra.pop("_derived")
            distributed.update(extra)
            for setting, value in implied.items():
                if setting not in own and setting not in top:
                    distributed[setting] = value

    def stage_input(self, field_name: str, path: tuple, ref: str) -> StageInput:
        artifact: Artifact = self.resolution.artifacts[ref]
        if ref in self.outputs:
            where = self.outputs[ref].path
        else:
            entry = self.models.get(ref) or self.datasets.get(ref) or {}
            where = entry.get("path")
        return StageInput(
            field=".".join(map(str, path)),
            ref=ref,
            type=artifact.type,
            fingerprint=self.fingerprints[ref],
            format=artifact.format,
            base=artifact.base,
            producer=artifact.producer,
            path=where,
        )

    def estimate(
        self,
        name: str,
        kind: str,
        config: dict[str, Any],
        compute: dict[str, Any],
        inputs: tuple[StageInput, ...],
    ) -> dict[str, Any]:
        arch = self.architecture(kind, config, inputs)
        policy = KINDS_BY_NAME[kind].policy_field
        policy_input = next((i for i in inputs if i.field == policy), None)
        config = dict(config)
        if policy_input is not None and not config.get("adapter"):
            inherited = self.adapters.get(policy_input.ref)
            if inherited:
                config["adapter"] = inherited
        if kind == "dpo":
            reference = next((i for i in inputs if i.field == "reference"), None)
            adapter_policy = bool(config.get("adapter")) or (
                policy_input is not None and policy_input.type == ADAPTER
            )
            config["_reference_is_separate_model"] = not adapter_policy or (
                reference is not None and reference.type not in (ADAPTER,)
            )
        data_field = {
            "pretrain": "data",
            "sft": "data",
            "dpo": "data",
            "grpo": "prompts",
            "ppo": "prompts",
            "rollout": "prompts",
            "eval": "data",
            "reward_model": "data",
        }.get(kind)
        data_input = next((i for i in inputs if i.field == data_field), None)
        examples = self.examples(data_input) if data_input else None
        result = estimate.estimate_stage(kind, config, arch, compute, examples=examples)
        if kind in GENERATING_KINDS:
            backend, why = generation_backend(config.get("generation") or {}, compute, kind)
            result["generation_backend"] = backend
            result.setdefault("notes", []).append(f"generation: {why}")
        return result

    def architecture(
        self, kind: str, config: dict[str, Any], inputs: tuple[StageInput, ...]
    ) -> architectures.Architecture | None:
        candidates = [i for i in inputs if i.type in (ADAPTER, PATCH, "model")]
        found = []
        for item in candidates:
            root = self.root_model.get(item.ref) or (item.base and self.root_model.get(item.base))
            if root and root in self.models:
                arch = architectures.lookup(self.models[root], self.cwd)
                if arch is not None:
                    found.append(arch)
        if not found:
            return None
        return max(found, key=lambda a: a.parameter_count())

    def examples(self, item: StageInput) -> int | None:
        if item.type != DATASET:
            return None
        entry = self.datasets.get(item.ref)
        return None if entry is None else mixtures.known_rows(entry)


def _env_names(node: Any) -> set[str]:
    """Names of every ``${env:NAME}`` reference: the job needs them, the plan never holds them."""
    found: set[str] = set()
    if isinstance(node, dict):
        for value in node.values():
            found |= _env_names(value)
    elif isinstance(node, list):
        for value in node:
            found |= _env_names(value)
    elif isinstance(node, str) and "${env:" in node:
        found.update(re.findall(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", node))
    return found
