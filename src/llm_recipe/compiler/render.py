"""Render pass: a Plan -> launch scripts (``recipe render``), one per stage plus run_all.sh.

Rendering is a pure function of the Plan, so the scripts can be reviewed, committed
and diffed like the recipe: no clock, no environment, no absolute path of this machine.
Scripts run from the project directory (plan paths are relative to it) and call
``python -m llm_recipe.runtime PLAN.json STAGE`` through the stage's launcher.

Safety: the templates never print a recipe value raw. Every ``{{ }}`` ends in a filter:
``q`` (shlex.quote, one literal shell word), ``envval`` (a value whose ``${env:NAME}``
parts become ``"${NAME:?...}"`` and the rest is quoted), ``c`` (comment text, control
characters removed), ``sbatch`` (only values that match a strict pattern: ``#SBATCH``
lines are not shell and cannot be quoted) or ``yaml`` (a JSON scalar). The Environment
uses StrictUndefined so a missing value fails the render instead of vanishing.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from llm_recipe.compiler import launchers, world
from llm_recipe.compiler.plan_types import Plan, StagePlan
from llm_recipe.errors import RecipeError

ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SBATCH_VALUE = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_.,:|&=%/@+-]*$")
"""``@`` and ``+`` are in a matrix's stage copy names (``sft@lr=1e-5``, ``eval@a+b``),
which become job names and log folders; sbatch gives neither a meaning."""
"""Values allowed on an ``#SBATCH`` line: the schema's slurm patterns and plain paths."""
SCRIPTS = (".sh", ".sbatch")
RENDERED = "rendered by `recipe render`"
"""In every rendered file but plan.json: what write_rendered may remove when stale."""


def render_plan(plan: Plan) -> dict[str, str]:
    """Relative file name -> content of every launch file of ``plan`` (pure, deterministic)."""
    template = template_env().get_template
    stages = [_stage(plan, s) for s in plan.stages]
    common = {"recipe": plan.recipe["name"], "source": _display(plan.recipe["file"]),
              "fingerprint": plan.recipe["fingerprint"], "total": len(stages)}
    files = {"plan.json": plan.to_json(),
             "run_all.sh": template("run_all.sh.j2").render(common, stages=stages)}
    files.update((st["script"], template("stage.sh.j2").render(common, st=st)) for st in stages)
    for st in stages:
        for key, name in (("accelerate", "accelerate.yaml.j2"), ("slurm", "slurm.sbatch.j2")):
            if st[key]:
                files[st[key]["file"]] = template(name).render(common, st=st)
    docker = [st for st in stages if st["docker"]]
    if docker:
        dockerfile = launchers.dockerfile(plan, docker)
        files["Dockerfile"] = template("Dockerfile.j2").render(common, **dockerfile)
        boxed = launchers.container_plan(plan)
        if boxed is not None:
            files[launchers.CONTAINER_PLAN] = boxed
    return files


def write_rendered(plan: Plan, out_dir: Path, *, name: str | None = None) -> list[Path]:
    """Write :func:`render_plan` under ``out_dir`` (scripts 0755); return the paths written.

    Launch files of an earlier render that this one no longer has (a renamed stage) are
    removed, so ``stages/`` never holds a script run_all.sh does not know; only files that
    say they were rendered, so ``-o .`` cannot delete a Dockerfile of the user's.

    ``name`` is how errors call the folder (``-o out``). A file where the folder (or one
    of its parents) should be is a RecipeError; any other OSError (disk full, permission
    denied) propagates naming the file it was writing, for the CLI to report.
    """
    files = render_plan(plan)
    out_dir = Path(out_dir)
    _check_folder(out_dir, name or str(out_dir))
    stale = [p for pattern in STALE for p in out_dir.glob(pattern)
             if p.relative_to(out_dir).as_posix() not in files and _says_rendered(p)]
    for path in stale:
        path.unlink()
    written = []
    for file, text in files.items():
        path = out_dir / file
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, "utf-8")
            tmp.chmod(0o755 if file.endswith(SCRIPTS) else 0o644)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.filename is None or exc.filename in (str(tmp), tmp):
                raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
            raise
        written.append(path)
    return written


STALE = ("stages/*.sh", "accelerate/*.yaml", "slurm/*.sbatch", "Dockerfile",
         launchers.CONTAINER_PLAN)
"""What an earlier render may have left that this one does not write."""


def _check_folder(out_dir: Path, name: str) -> None:
    """Refuse a render folder that is a file, or that a file blocks, before writing anything."""
    for path in (out_dir, *out_dir.parents):
        if os.path.lexists(path):
            if path.is_dir():
                return
            raise RecipeError(
                f"{name} is a file, not a folder" if path == out_dir
                else f"{name}: {path} is a file, not a folder",
                expected="a new or existing folder for plan.json, run_all.sh and stages/",
                hint="choose another folder, or move the file out of the way",
            )


def _says_rendered(path: Path) -> bool:
    """Whether a file an earlier render may have written says so (its first 64 KiB)."""
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return RENDERED.encode() in handle.read(1 << 16)


@lru_cache(maxsize=1)
def template_env() -> jinja2.Environment:
    """The one Jinja environment: strict, no HTML escaping, shell-safe filters only."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("llm_recipe", "templates"), undefined=jinja2.StrictUndefined,
        autoescape=False, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(q=quote, envval=env_word, c=comment, sbatch=sbatch_value, yaml=_yaml)
    return env


def quote(value: Any) -> str:
    """One literal shell word (booleans as YAML writes them); None is a render bug.

    A missing variable arrives as StrictUndefined, whose str() raises UndefinedError.
    """
    if value is None:
        raise TypeError(f"cannot quote {value!r} for a shell")
    if isinstance(value, bool):
        value = "true" if value else "false"
    return shlex.quote(str(value))


def env_word(value: Any) -> str:
    """A shell word for an env value: ``${env:NAME}`` -> ``"${NAME:?...}"``, the rest quoted.

    The secret's value is never written: the script reads it from the environment of
    whoever runs it, and stops with a clear message when it is not set.
    """
    text = quote(value) if isinstance(value, bool) else str(value)
    parts, pos = [], 0
    for match in ENV_REF.finditer(text):
        if match.start() > pos:
            parts.append(shlex.quote(text[pos:match.start()]))
        name = match.group(1)
        parts.append(f'"${{{name}:?{name} must be set}}"')
        pos = match.end()
    if pos < len(text) or not parts:
        parts.append(shlex.quote(text[pos:]))
    return "".join(parts)


def comment(value: Any) -> str:
    """Text for a ``#`` comment: a newline in a value must not end the comment."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", str(value))


def sbatch_value(value: Any) -> str:
    """A value for an ``#SBATCH`` line, which sbatch parses without a shell: strict or fail."""
    text = str(value)
    if not SBATCH_VALUE.match(text):
        raise ValueError(f"unsafe value for an #SBATCH line: {text!r}")
    return text


def _yaml(value: Any) -> str:
    """A YAML scalar: JSON's spelling is valid YAML and quotes every string."""
    return json.dumps(value)


def _display(file: str) -> str:
    """The recipe file for a header: as given when relative, else its name (no host paths)."""
    return file if not Path(file).is_absolute() else Path(file).name


def _stage(plan: Plan, s: StagePlan) -> dict[str, Any]:
    """What the templates need of one stage, every value checked or left for a filter."""
    compute, launcher = s.compute, s.launcher
    env = compute.get("env") or {}
    for key in env:
        if not ENV_NAME.match(key):
            raise RecipeError(f"'{key}' is not an environment variable name",
                              path=("stages", s.name, "compute", "env", key))
    inner = launcher["inner"] or launcher["name"]
    visible = compute.get("visible_devices")
    st: dict[str, Any] = {
        "name": s.name, "kind": s.kind, "index": s.index + 1, "dir": s.dir,
        "script": f"stages/{s.index + 1:02d}-{s.name}.sh", "fingerprint": s.fingerprint,
        "launcher": launcher["name"], "inner": inner, "nodes": launcher["nodes"],
        "ppn": launcher["processes_per_node"],
        # [name, value, whether its literal text has a '$' or '`' (shellcheck SC2016)]
        "env": [[k, v, bool(re.search(r"[$`]", ENV_REF.sub("", str(v))))]
                for k, v in env.items()],
        "visible": ",".join(map(str, visible)) if visible else "",
        "batch": _batch(s), "accelerate": None, "torchrun": None, "docker": None, "slurm": None,
    }
    if inner == "accelerate":
        st["accelerate"] = launchers.accelerate(plan, s)
    if inner == "torchrun":
        st["torchrun"] = launchers.torchrun(plan, s)
    if launcher["name"] == "docker":
        st["docker"] = launchers.docker(plan, s, env)
    if launcher["name"] == "slurm":
        st["slurm"] = launchers.slurm(plan, s)
        st["visible"] = ""  # slurm binds the GPUs it allocates; an inherited value would fight it
    st["summary"] = (f"{st['launcher']}" + (f" {st['docker']['image']} + {inner}"
                     if st["docker"] else "") + f", {_count(st['nodes'], 'node')} x "
                     f"{_count(st['ppn'], 'process', 'es')}")
    return st


def _count(n: int, word: str, plural: str = "s") -> str:
    return f"{n} {word}{'' if n == 1 else plural}"


def _batch(s: StagePlan) -> str:
    train = s.config.get("train")
    if not isinstance(train, dict) or "batch_size" not in train:
        return ""
    per, accum = int(train["batch_size"]), int(train.get("grad_accum") or 1)
    replicas = world.replicas(s.compute)
    unit = (_count(replicas, "process", "es") if replicas == s.launcher["processes"]
            else f"{replicas} GPUs (DataParallel)")
    return f"{per} per device x {accum} accumulation x {unit} = {per * accum * replicas}"
