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
import posixpath
import re
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from llm_recipe.compiler import world
from llm_recipe.compiler.estimate import DEFAULT_ZERO_STAGE
from llm_recipe.compiler.plan import Plan, StagePlan
from llm_recipe.compiler.schema import recipe_schema
from llm_recipe.errors import RecipeError

ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SBATCH_VALUE = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_.,:|&=%/-]*$")
"""Values allowed on an ``#SBATCH`` line: the schema's slurm patterns and plain paths."""
SLURM_LOG_DIR = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_./-]*$")
"""A stage dir usable in ``#SBATCH --output`` (no spaces, no '%': sbatch expands %-patterns)."""
VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""A docker named volume; any other key of docker.volumes is a host path."""
APP = "/app"
"""The container's working directory (the templates mount the render folder at /recipe)."""
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
        files["Dockerfile"] = template("Dockerfile.j2").render(common, **_dockerfile(plan, docker))
    return files


def write_rendered(plan: Plan, out_dir: Path) -> list[Path]:
    """Write :func:`render_plan` under ``out_dir`` (scripts 0755); return the paths written.

    Launch files of an earlier render that this one no longer has (a renamed stage) are
    removed, so ``stages/`` never holds a script run_all.sh does not know; only files that
    say they were rendered, so ``-o .`` cannot delete a Dockerfile of the user's.
    """
    files = render_plan(plan)
    out_dir = Path(out_dir)
    stale = [p for pattern in ("stages/*.sh", "accelerate/*.yaml", "slurm/*.sbatch", "Dockerfile")
             for p in out_dir.glob(pattern)
             if p.relative_to(out_dir).as_posix() not in files
             and RENDERED in p.read_text("utf-8", errors="replace")]
    for path in stale:
        path.unlink()
    written = []
    for name, text in files.items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, "utf-8")
        tmp.chmod(0o755 if name.endswith(SCRIPTS) else 0o644)
        os.replace(tmp, path)
        written.append(path)
    return written


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


def _default(section: str, key: str) -> Any:
    """A compute default from the schema (the one place defaults are written)."""
    return recipe_schema()["$defs"]["compute"]["properties"][section]["properties"][key]["default"]


def _gpu(compute: dict[str, Any]) -> bool:
    return int(compute.get("gpus_per_node") or 0) > 0


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
        st["accelerate"] = _accelerate(plan, s)
    if inner == "torchrun":
        st["torchrun"] = _torchrun(plan, s)
    if launcher["name"] == "docker":
        st["docker"] = _docker(plan, s, env)
    if launcher["name"] == "slurm":
        st["slurm"] = _slurm(plan, s)
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


def _precision(compute: dict[str, Any]) -> str:
    """accelerate's mixed_precision: the runtime's rule (auto: bf16 on GPUs, fp32 on CPU)."""
    value = compute.get("precision") or "auto"
    if value == "auto":
        value = "bf16" if _gpu(compute) else "fp32"
    return {"bf16": "bf16", "fp16": "fp16"}.get(value, "no")


def _accelerate(plan: Plan, s: StagePlan) -> dict[str, Any]:
    """What accelerate.yaml.j2 needs. Several CPU processes are MULTI_GPU (gloo) without
    use_cpu: with ``--cpu`` accelerate starts one process whatever num_processes says."""
    compute, processes = s.compute, s.launcher["processes"]
    dist, settings = compute.get("distributed") or {}, compute.get("accelerate") or {}
    return {
        "file": f"accelerate/{s.name}.yaml", "processes": processes,
        "kind": {"fsdp": "FSDP", "deepspeed": "DEEPSPEED"}.get(
            dist.get("strategy") or "auto", "MULTI_GPU" if processes > 1 else "NO"),
        "precision": _precision(compute), "use_cpu": not _gpu(compute) and processes == 1,
        "port": settings.get("main_process_port", _default("accelerate", "main_process_port")),
        "ip": settings.get("main_process_ip", ""), "offload": dist.get("offload") or "none",
        "zero_stage": int(dist.get("zero_stage", DEFAULT_ZERO_STAGE)),
        "grad_accum": int((s.config.get("train") or {}).get("grad_accum") or 1),
        "multinode": s.launcher["nodes"] > 1, "ip_from_env": "main_process_ip" not in settings,
    }


def _torchrun(plan: Plan, s: StagePlan) -> dict[str, Any]:
    settings = s.compute.get("torchrun") or {}
    endpoint = settings.get("rdzv_endpoint")
    backend = settings.get("rdzv_backend") or _default("torchrun", "rdzv_backend")
    return {"standalone": s.launcher["nodes"] == 1 and not endpoint, "backend": backend,
            "endpoint": endpoint or "", "node_rank": backend == "static",
            "id": settings.get("rdzv_id") or f"{plan.recipe['name']}-{s.name}",
            "max_restarts": settings.get("max_restarts", _default("torchrun", "max_restarts"))}


def _mount(host: str, box: str, at: tuple, readonly: bool) -> dict[str, Any]:
    """One ``-v`` argument; a relative host path is anchored at the project directory."""
    if ":" in host or ":" in box:
        raise RecipeError(f"'{host}' cannot be mounted into a docker container (':' in -v)",
                          path=at, hint="use a path without ':'")
    return {"pwd": not host.startswith("/"), "spec": f"{host}:{box}" + (":ro" if readonly else "")}


def _docker(plan: Plan, s: StagePlan, env: dict[str, Any]) -> dict[str, Any]:
    settings = s.compute.get("docker") or {}
    root = plan.workspace[: -len(plan.recipe["name"]) - 1] or "."
    box_root = root if root.startswith("/") else posixpath.normpath(f"{APP}/{root}")
    if box_root in ("/", APP):
        raise RecipeError(f"workspace root '{root}' would hide the container's {APP}",
                          path=("workspace", "root"), hint="use a folder such as outputs")
    mounts = [_mount(root, box_root, ("workspace", "root"), False)]
    seen = {root}
    for at, path in _local_inputs(plan):
        if path not in seen:
            seen.add(path)
            box = path if path.startswith("/") else posixpath.normpath(f"{APP}/{path}")
            mounts.append(_mount(path, box, at, True))
    for host, box in (settings.get("volumes") or {}).items():
        named = VOLUME_NAME.match(host) and "." not in host
        at = ("stages", s.name, "compute", "docker", "volumes", host)
        spec = {"pwd": False, "spec": f"{host}:{box}"} if named else _mount(
            posixpath.normpath(host), box, at, False)
        mounts.append(spec)
    names = sorted(set(env) | set(plan.env))
    if s.compute.get("visible_devices") and settings.get("gpus") == "all":
        names.append("CUDA_VISIBLE_DEVICES")  # host ids = container ids only with --gpus all
    multinode = s.launcher["nodes"] > 1
    return {
        "image": settings["image"], "gpus": settings.get("gpus") if _gpu(s.compute) else "",
        "root": root, "mounts": mounts, "env": names, "ports": [] if multinode else
        list(settings.get("ports") or []), "shm_size": settings.get("shm_size") or "",
        "ipc_host": s.launcher["processes_per_node"] > 1 and not settings.get("shm_size"),
        "network_host": multinode,
    }


def _local_inputs(plan: Plan) -> list[tuple[tuple, str]]:
    """Local files the plan reads (models, datasets, tokenizers): a container must see them."""
    found = []
    for section in ("models", "datasets"):
        for name, entry in getattr(plan, section).items():
            if isinstance(entry.get("path"), str):
                found.append(((section, name, "path"), entry["path"]))
            tokenizer = entry.get("tokenizer")
            if isinstance(tokenizer, dict) and isinstance(tokenizer.get("path"), str):
                found.append(((section, name, "tokenizer", "path"), tokenizer["path"]))
    return found


def _slurm(plan: Plan, s: StagePlan) -> dict[str, Any]:
    if not SLURM_LOG_DIR.match(s.dir):
        raise RecipeError(f"stage dir '{s.dir}' cannot go on an #SBATCH --output line",
                          path=("workspace", "root"),
                          expected="letters, digits, '.', '_', '-' and '/' only")
    settings = s.compute.get("slurm") or {}
    lines = [("job-name", f"{plan.recipe['name']}-{s.name}"), ("nodes", s.launcher["nodes"]),
             ("ntasks-per-node", 1)]
    if _gpu(s.compute):
        lines.append(("gpus-per-node", s.compute["gpus_per_node"]))
    for key in ("cpus_per_task", "time", "partition", "account", "qos", "mem", "constraint"):
        if key in settings:
            lines.append((key.replace("_", "-"), settings[key]))
    lines.append(("output", f"{s.dir}/slurm-%j.log"))
    torchrun = s.compute.get("torchrun") or {}
    return {"file": f"slurm/{s.name}.sbatch", "lines": lines,
            "exclusive": bool(settings.get("exclusive", _default("slurm", "exclusive"))),
            "max_restarts": torchrun.get("max_restarts", _default("torchrun", "max_restarts"))}


def _dockerfile(plan: Plan, stages: list[dict[str, Any]]) -> dict[str, Any]:
    """One image for every docker stage: GPU base when any of them uses GPUs."""
    gpu = any(_gpu(plan.stage(st["name"]).compute) for st in stages)
    extras = []
    if any((plan.stage(st["name"]).config.get("adapter") or {}).get("type") == "qlora"
           for st in stages):
        extras.append("qlora")
    if (plan.tracking or {}).get("backend") == "mlflow":
        extras.append("mlflow")
    return {"gpu": gpu,
            "images": sorted({st["docker"]["image"] for st in stages}),
            "target": f".[{','.join(extras)}]" if extras else "."}
