"""What the runtime trusts on disk, and how it recovers when it should not.

A stage's folder outlives the process that wrote it: a kill leaves temporaries and
half-saved checkpoints, a disk error truncates a file, a stray process edits one. The
executor asks this module before it trusts anything: whether an upstream output still
matches the sha256 its manifest recorded (:func:`damaged_inputs`), which checkpoint is
intact enough to resume from (:func:`resume_point`), what a clean start may delete
(:func:`clean_start`, never through a link), and how to name a full disk
(:func:`disk_full`).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

from llm_recipe.compiler.plan import Plan, StagePlan
from llm_recipe.compiler.status import PARTIAL, output_problem, read_manifest, stage_status
from llm_recipe.errors import RecipeError
from llm_recipe.runtime.log import truncate_metrics
from llm_recipe.runtime.workspace import clear_manifest


def stage_path(root: Path, plan_path: str) -> Path:
    """A plan path (relative to the working directory) as a path on disk."""
    path = Path(plan_path)
    return path if path.is_absolute() else root / path


def damaged_inputs(plan: Plan, stage: StagePlan, root: Path,
                   trusted: set[str]) -> list[tuple[str, str]]:
    """Upstream stages whose output no longer matches its manifest's sha256: (name, why).

    ``trusted`` holds stages whose outputs were written or verified earlier in this run;
    verified ones are added to it, so each output is hashed at most once per run.
    """
    damaged = []
    for name in stage.upstream:
        if name in trusted:
            continue
        manifest = read_manifest(stage_path(root, plan.stage(name).dir))
        problem = output_problem(manifest, root, hashes=True) if manifest else None
        if problem is None:
            trusted.add(name)
        else:
            damaged.append((name, problem))
    return damaged


def verify_inputs(plan: Plan, stage: StagePlan, root: Path) -> None:
    """For a stage started without ``recipe run`` (a rendered script): refuse to consume
    a damaged upstream output, and leave its producer not fresh so the next run redoes it.
    """
    for name, problem in damaged_inputs(plan, stage, root, set()):
        clear_manifest(stage_path(root, plan.stage(name).dir))
        raise RecipeError(f"stage {stage.name} needs the output of {name}, which is damaged: "
                          f"{problem}", hint=f"run {name} again (recipe run re-runs it "
                          "by itself); it is no longer counted as fresh")


def disk_full(exc: BaseException, directory: Path) -> str | None:
    """"no space left on <mount> ..." when ``exc`` (or its cause) is a full disk, else None.

    Savers say it differently: an OSError with ENOSPC or EDQUOT, safetensors' "No space
    left on device (os error 28)"; torch's archive writer names no cause ("file write
    failed", "unexpected pos N vs M"), so those count when the disk is nearly full now.
    """
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    full = any((isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
               or "No space left on device" in str(e) for e in chain)
    if not full and any(p in str(e) for e in chain for p in _TORCH_WRITER_ERRORS):
        full = _free_bytes(directory) < 64 * 1024 * 1024
    if not full:
        return None
    mount = directory.resolve()
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    return (f"no space left on {mount} ({_free_bytes(directory):,} bytes free) while "
            f"writing {directory}; free some space and run again: the stage resumes from "
            "its last complete checkpoint")


_TORCH_WRITER_ERRORS = ("file write failed", "PytorchStreamWriter", "unexpected pos")


def _free_bytes(directory: Path) -> int:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return 0


_TEMPORARY = re.compile(r"^\..+\.tmp-[0-9]+-[0-9]+$")


def sweep_temporaries(directory: Path) -> None:
    """Remove what a killed writer left (``.model.tmp-<pid>-<ns>``); call under the lock."""
    for folder in (directory, directory / "checkpoints"):
        if folder.is_symlink() or not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if _TEMPORARY.match(entry.name):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


def resume_point(directory: Path, stage: StagePlan, notes: list[str]) -> Path | None:
    """The newest intact checkpoint of an interrupted run of this fingerprint, if any.

    Damaged checkpoints are named in ``notes`` (for the log) and skipped.
    """
    from llm_recipe.runtime.checkpoints import checkpoint_problem, resume_candidates

    status = stage_status(directory, stage.fingerprint, stage.config, directory)
    if status["state"] != PARTIAL:
        return None
    for candidate in resume_candidates(directory / "checkpoints"):
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate
        notes.append(f"checkpoint {candidate.name} is damaged: {problem}; not resuming from it")
    if notes:
        notes.append("no intact checkpoint is left: starting again from step 0")
    return None


def explicit_resume(directory: Path, stage: StagePlan, root: Path, notes: list[str], *,
                    forced: bool = False) -> Path | None:
    """The checkpoint ``train.resume_from`` names, checked, when nothing of this run's own
    is resumed (Axolotl's and the HF Trainer's ``resume_from_checkpoint``).

    ``latest``: this stage's newest intact checkpoint even though its settings changed
    (to train on from it, e.g. with more steps), none under ``--force``; a path: that
    checkpoint folder, e.g. another run's ``checkpoint-500``. A missing or damaged one
    is refused, naming what is wrong (:func:`checkpoint_problem`), rather than silently
    starting from step 0.
    """
    from llm_recipe.runtime.checkpoints import checkpoint_problem, resume_candidates

    wanted = (stage.config.get("train") or {}).get("resume_from")
    if not wanted:
        return None
    at = ("stages", stage.name, "train", "resume_from")
    if wanted == "latest":
        if forced:
            notes.append("--force: starting from step 0 (resume_from: latest not used)")
            return None
        for candidate in resume_candidates(directory / "checkpoints"):
            problem = checkpoint_problem(candidate)
            if problem is None:
                return candidate
            notes.append(f"checkpoint {candidate.name} is damaged: {problem}; not resuming "
                         "from it")
        raise RecipeError(f"stage {stage.name}: resume_from is latest, and the stage has no "
                          "intact checkpoint to resume from", path=at,
                          hint="remove resume_from to start from step 0")
    checkpoint = stage_path(root, wanted)
    if not checkpoint.is_dir():
        raise RecipeError(f"stage {stage.name}: resume_from {wanted} is not a checkpoint folder",
                          path=at, expected="a checkpoint-N folder written by a training run",
                          hint="check the path (relative to the recipe file), or write latest")
    problem = checkpoint_problem(checkpoint)
    if problem is not None:
        raise RecipeError(f"stage {stage.name}: cannot resume from {wanted}: {problem}",
                          path=at, hint="name an intact checkpoint, e.g. an earlier "
                          "checkpoint-N beside it")
    return checkpoint


def forget_after(directory: Path, resume_from: Path) -> None:
    """Resuming from an older checkpoint: the newer (damaged) ones and the rows they
    logged must not survive, or the pointers, the trainer's rotation and metrics.jsonl
    would mix two histories."""
    from llm_recipe.runtime.checkpoints import LATEST, record_step, write_pointer

    step = record_step(resume_from)
    for folder in (directory / "checkpoints").glob("checkpoint-*"):
        if folder != resume_from and (record_step(folder) or 0) > step:
            shutil.rmtree(folder, ignore_errors=True)
    write_pointer(directory / "checkpoints", LATEST, resume_from, step=step)
    truncate_metrics(directory, step)


def remove_output(output: Path, directory: Path) -> None:
    """Remove an earlier attempt's output before the stage writes its new one.

    A re-run of a stale stage must not leave files of the old config beside the new ones
    (an adapter folder under a full model's, a tokenizer file the new run does not
    write). Only a path inside the stage's folder is removed; a link as a link.
    """
    if not output.resolve().is_relative_to(directory.resolve()) and not output.is_symlink():
        return
    if output.is_symlink() or output.is_file():
        output.unlink()
    elif output.is_dir():
        shutil.rmtree(output)


def clean_start(directory: Path) -> None:
    """A clean start: drop checkpoints, logs and outputs of earlier attempts.

    Links are removed as links; a linked checkpoints folder is refused rather than
    emptied through the link, which may point anywhere.
    """
    for name in ("checkpoints", "train.log", "metrics.jsonl"):
        target = directory / name
        if target.is_symlink():
            if name == "checkpoints":
                raise RecipeError(
                    f"{target} is a symbolic link (to {os.readlink(target)}); a clean start "
                    "would delete the checkpoints through it",
                    hint="remove the link, or empty its target yourself, and run again")
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
