"""What each launcher needs of a stage: the values behind its template.

Split from :mod:`llm_recipe.compiler.render`, which owns the files, the templating and
the quoting filters: here one function per launcher turns a StagePlan into the dict its
template reads, and refuses values that cannot be quoted where they land (``#SBATCH``
lines, docker mount specs).
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from llm_recipe.compiler.estimate import DEFAULT_ZERO_STAGE
from llm_recipe.compiler.plan_types import Plan, StagePlan
from llm_recipe.compiler.schema import recipe_schema
from llm_recipe.compiler.world import precision_mode
from llm_recipe.errors import RecipeError

SLURM_LOG_DIR = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_./@=,+-]*$")
"""A stage dir usable in ``#SBATCH --output`` (no spaces, no '%': sbatch expands %-patterns;
``@ = , +`` appear in a matrix's stage copy names, ``sft@lr=1e-5,r=8``)."""
VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""A docker named volume; any other key of docker.volumes is a host path."""
APP = "/app"
"""The container's working directory (the templates mount the render folder at /recipe)."""
INPUTS = "/recipe-inputs"
"""Where local inputs from outside the project are mounted (never over the image's files)."""
PLAN = "/recipe/plan.json"
CONTAINER_PLAN = "docker/plan.json"
"""The plan as docker stages see it, in the render folder, when inputs are remapped."""


def _gpu(compute: dict[str, Any]) -> bool:
    return int(compute.get("gpus_per_node") or 0) > 0


def _default(section: str, key: str) -> Any:
    """A compute default from the schema (the one place defaults are written)."""
    return recipe_schema()["$defs"]["compute"]["properties"][section]["properties"][key]["default"]


def _precision(compute: dict[str, Any]) -> str:
    """accelerate's mixed_precision: autocast only for the mixed modes (bf16-true loads
    bf16 weights and needs none); the runtime sets the same itself, whatever this says."""
    return {"bf16-mixed": "bf16", "fp16-mixed": "fp16"}.get(precision_mode(compute), "no")


def accelerate(plan: Plan, s: StagePlan) -> dict[str, Any]:
    """What accelerate.yaml.j2 needs. Several CPU processes are MULTI_GPU (gloo) without
    use_cpu: with ``--cpu`` accelerate starts one process whatever num_processes says."""
    compute, processes = s.compute, s.launcher["processes"]
    dist, settings = compute.get("distributed") or {}, compute.get("accelerate") or {}
    kind = {"fsdp": "FSDP", "deepspeed": "DEEPSPEED"}.get(
        dist.get("strategy") or "auto", "MULTI_GPU" if processes > 1 else "NO")
    offload = dist.get("offload") or "none"
    ds_file = dist.get("deepspeed_config") if kind == "DEEPSPEED" else None
    if ds_file and s.launcher["name"] == "docker":
        ds_file = container_paths(plan)[ds_file]
    fsdp = fsdp_settings(dist, offload) if kind == "FSDP" else {}
    return {
        "file": f"accelerate/{s.name}.yaml", "processes": processes, "kind": kind,
        "precision": _precision(compute), "use_cpu": not _gpu(compute) and processes == 1,
        "port": settings.get("main_process_port", _default("accelerate", "main_process_port")),
        "ip": settings.get("main_process_ip", ""), "offload": offload,
        "zero_stage": int(dist.get("zero_stage", DEFAULT_ZERO_STAGE)),
        "grad_accum": int((s.config.get("train") or {}).get("grad_accum") or 1),
        "multinode": s.launcher["nodes"] > 1, "ip_from_env": "main_process_ip" not in settings,
        # Your own DeepSpeed config: accelerate reads the stage, offload, batch and precision
        # from it and refuses the same settings in this file (mixed_precision included).
        "ds_file": ds_file or "", "ds_sha": dist.get("deepspeed_config_sha256") or "",
        "fsdp": fsdp, "fsdp_extra": [[k, v] for k, v in fsdp.items() if k not in FSDP_RENDERED],
        "fsdp_file": dist.get("fsdp_config") or "",
        "fsdp_sha": dist.get("fsdp_config_sha256") or "",
    }


FSDP_DEFAULTS: dict[str, Any] = {
    "fsdp_version": 1, "fsdp_reshard_after_forward": "FULL_SHARD",
    "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_offload_params": False,
    "fsdp_backward_prefetch": "BACKWARD_PRE", "fsdp_state_dict_type": "FULL_STATE_DICT",
    "fsdp_use_orig_params": True, "fsdp_cpu_ram_efficient_loading": True,
    "fsdp_sync_module_states": True, "fsdp_forward_prefetch": False,
    "fsdp_activation_checkpointing": False,
}
"""The FSDP settings accelerate.yaml.j2 writes, in its order (FSDP1, full state dict)."""
FSDP_RENDERED = frozenset(FSDP_DEFAULTS)
FSDP1_ONLY = ("fsdp_backward_prefetch", "fsdp_use_orig_params", "fsdp_sync_module_states",
              "fsdp_forward_prefetch")
"""Settings FSDP2 drops or refuses (accelerate: obsolete, or forward_prefetch not allowed)."""


def fsdp_settings(dist: dict[str, Any], offload: str) -> dict[str, Any]:
    """The rendered defaults with ``compute.distributed.offload``, then the settings of the
    stage's FSDP file over them; with ``fsdp_version: 2`` the FSDP1-only defaults go and
    ``fsdp_reshard_after_forward`` is a boolean."""
    out = {**FSDP_DEFAULTS, "fsdp_offload_params": offload != "none"}
    own = dict(dist.get("fsdp_settings") or {})
    if own.get("fsdp_version") == 2:
        for key in FSDP1_ONLY:
            out.pop(key)
        out["fsdp_reshard_after_forward"] = True
    out.update(own)
    return out


def torchrun(plan: Plan, s: StagePlan) -> dict[str, Any]:
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


def docker(plan: Plan, s: StagePlan, env: dict[str, Any]) -> dict[str, Any]:
    settings = s.compute.get("docker") or {}
    root = plan.workspace[: -len(plan.recipe["name"]) - 1] or "."
    box_root = root if root.startswith("/") else posixpath.normpath(f"{APP}/{root}")
    if box_root in ("/", APP):
        raise RecipeError(f"workspace root '{root}' would hide the container's {APP}",
                          path=("workspace", "root"), hint="use a folder such as outputs")
    mounts = [_mount(root, box_root, ("workspace", "root"), False)]
    seen = {root}
    boxes = container_paths(plan)
    for at, path in _local_inputs(plan):
        if path not in seen:
            seen.add(path)
            mounts.append(_mount(path, boxes[path], at, True))
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
        "plan": f"/recipe/{CONTAINER_PLAN}" if remapped(plan) else PLAN,
        "root": root, "mounts": mounts, "env": names, "ports": [] if multinode else
        list(settings.get("ports") or []), "shm_size": settings.get("shm_size") or "",
        "ipc_host": s.launcher["processes_per_node"] > 1 and not settings.get("shm_size"),
        "network_host": multinode,
    }


def container_paths(plan: Plan) -> dict[str, str]:
    """Plan path of each local input -> where a docker container sees it.

    Inside the project a path keeps its place under the container's working directory
    (``data/x.jsonl`` -> ``/app/data/x.jsonl``), so the plan's relative path reads the
    same file there. A path outside it (absolute, or leaving it with ``..``) is mounted
    under ``/recipe-inputs/<section>/<name>/``, never at its host path: ``/etc/passwd``
    mounted at ``/etc/passwd`` would replace the image's own file. The file name is
    kept, since the runtime reads a dataset's format from its extension.
    """
    boxes: dict[str, str] = {}
    for at, path in _local_inputs(plan):
        if path in boxes:
            continue
        inside = posixpath.normpath(f"{APP}/{path}")
        if not path.startswith("/") and inside.startswith(f"{APP}/"):
            boxes[path] = inside
            continue
        section, name = at[0], at[1]
        folder = f"{name}.tokenizer" if at[2] == "tokenizer" else name
        base = posixpath.basename(posixpath.normpath(path))
        boxes[path] = f"{INPUTS}/{section}/{folder}/{base if base not in ('', '.', '..') else name}"
    return boxes


def remapped(plan: Plan) -> dict[str, str]:
    """The local inputs a container sees at another path than the plan's (see above)."""
    return {host: box for host, box in container_paths(plan).items()
            if box.startswith(f"{INPUTS}/")}


def container_plan(plan: Plan) -> str | None:
    """plan.json as docker stages read it: remapped input paths, or None when none is.

    The runtime reads only the plan, and in a container an input outside the project is
    not at its host path; this copy names the mount instead. Stage outputs and the
    workspace keep their paths (the workspace is mounted where the plan says).
    """
    boxes = remapped(plan)
    if not boxes:
        return None
    data = plan.to_dict()
    for section in ("models", "datasets"):
        for entry in data[section].values():
            for holder in (entry, entry.get("tokenizer")):
                if isinstance(holder, dict) and holder.get("path") in boxes:
                    holder["path"] = boxes[holder["path"]]
    for stage in data["stages"]:
        for item in stage["inputs"]:
            if item["producer"] is None and item["path"] in boxes:
                item["path"] = boxes[item["path"]]
    data["extra"] = {**data["extra"], "container_paths": boxes,
                     "note": "rendered by `recipe render`: the plan as docker stages see it"}
    return Plan.from_dict(data).to_json()


def _local_inputs(plan: Plan) -> list[tuple[tuple, str]]:
    """Local files the plan reads (models, datasets, tokenizers, a DeepSpeed config that
    accelerate reads in the container): a container must see them."""
    found = []
    for section in ("models", "datasets"):
        for name, entry in getattr(plan, section).items():
            if isinstance(entry.get("path"), str):
                found.append(((section, name, "path"), entry["path"]))
            tokenizer = entry.get("tokenizer")
            if isinstance(tokenizer, dict) and isinstance(tokenizer.get("path"), str):
                found.append(((section, name, "tokenizer", "path"), tokenizer["path"]))
    for stage in plan.stages:
        ds_file = (stage.compute.get("distributed") or {}).get("deepspeed_config")
        if isinstance(ds_file, str) and stage.launcher["name"] == "docker":
            found.append((("stages", stage.name, "compute", "distributed", "deepspeed_config"),
                          ds_file))
    return found


def slurm(plan: Plan, s: StagePlan) -> dict[str, Any]:
    if not SLURM_LOG_DIR.match(s.dir):
        raise RecipeError(f"stage dir '{s.dir}' cannot go on an #SBATCH --output line",
                          path=("workspace", "root"),
                          expected="letters, digits, '.', '_', '-' and '/' only "
                                   "(and the '@=,+' of stage copy names)")
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


def dockerfile(plan: Plan, stages: list[dict[str, Any]]) -> dict[str, Any]:
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
