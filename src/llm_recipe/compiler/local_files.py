"""Plan-time rule: a local file that a stage will read must exist.

A dataset or model ``path:`` that is not on disk used to be a warning, and the run
found out a minute later, after the stages before it had trained. Now it is an error
at the entry's ``path:`` line, naming who reads it (``stage sft (data)``, the tokenizer
of a model, a mixture), so ``recipe plan`` refuses what the run could only fail on.

Commands that look at a workspace rather than start work (``status``, ``clean``,
``logs``, ``diff`` of a git revision, where ignored data files are not checked out)
compile with ``require_files=False``: a missing file is then the plan's warning.

Paths are relative to the file that wrote them (a base file of ``extends``, or the
recipe), ``--set`` values to the working directory, as in the plan pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_recipe.compiler.mixtures import is_mixture
from llm_recipe.compiler.resolve import Resolution
from llm_recipe.compiler.rules import mapping_at
from llm_recipe.compiler.source import SourceMap
from llm_recipe.errors import RecipeError


def readers(data: dict[str, Any], resolution: Resolution) -> dict[str, list[str]]:
    """Who reads each models:/datasets: entry: ``stage sft (data)``, ``mixture mix``,
    ``the tokenizer of model scratch``."""
    found: dict[str, list[str]] = {}
    for stage in resolution.order:
        for edge in resolution.edges.get(stage, ()):
            found.setdefault(edge.ref, []).append(f"stage {stage} ({edge.field})")
    datasets = mapping_at(data, "datasets")
    for name, entry in datasets.items():
        if is_mixture(entry) and found.get(name):
            for member in entry.get("mixture") or []:
                if isinstance(member, dict) and isinstance(member.get("data"), str):
                    found.setdefault(member["data"], []).append(f"mixture {name}")
    for name, entry in mapping_at(data, "models").items():
        tokenizer = entry.get("tokenizer") if isinstance(entry, dict) else None
        trained_on = (tokenizer or {}).get("train") if isinstance(tokenizer, dict) else None
        if isinstance(trained_on, dict) and isinstance(trained_on.get("data"), str):
            found.setdefault(trained_on["data"], []).append(f"the tokenizer of model {name}")
    return found


def missing_file_errors(data: dict[str, Any], resolution: Resolution, where: SourceMap,
                        cwd: Path) -> list[RecipeError]:
    """An error for each local ``path`` (dataset, model, model tokenizer) that does not
    exist and that something in the recipe reads."""
    read_by = readers(data, resolution)
    errors: list[RecipeError] = []
    for section, what in (("datasets", "dataset"), ("models", "model")):
        for name, entry in mapping_at(data, section).items():
            if not isinstance(entry, dict) or not read_by.get(name):
                continue
            tokenizer = entry.get("tokenizer")
            paths = [((section, name, "path"), entry.get("path"), what)]
            if isinstance(tokenizer, dict):
                paths.append(((section, name, "tokenizer", "path"), tokenizer.get("path"),
                              f"{what} tokenizer"))
            for at, path, label in paths:
                if isinstance(path, str) and not _on_disk(path, at, where, cwd).exists():
                    errors.append(_missing(at, path, label, name, read_by[name], where, cwd))
    return errors


def _on_disk(path: str, at: tuple, where: SourceMap, cwd: Path) -> Path:
    return where.anchor(at, cwd) / path  # an absolute path stays itself


def _missing(at: tuple, path: str, label: str, name: str, read_by: list[str],
             where: SourceMap, cwd: Path) -> RecipeError:
    full = _on_disk(path, at, where, cwd).resolve()
    shown = full.relative_to(cwd.resolve()) if full.is_relative_to(cwd.resolve()) else full
    looked = "" if str(shown) == path else f" (looked for {shown})"
    return where.error(
        at, f"{label} '{name}': {path} does not exist{looked}",
        expected=f"an existing file or folder: read by {', '.join(dict.fromkeys(read_by))}",
        hint="create it or fix the path (relative paths are relative to the recipe file); "
        "planning for another machine: recipe plan --allow-missing-files")
