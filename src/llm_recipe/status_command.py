"""``recipe status`` and ``recipe logs``: look at a recipe's workspace without changing it.

Both compile the recipe (torch-free, a fraction of a second) to know its stages and
their folders, then only read: manifests, stage.json, the tail of metrics.jsonl, the
stage locks' leases and train.log (:mod:`llm_recipe.compiler.workspace_status`).
"""

from __future__ import annotations

import argparse
import codecs
import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from llm_recipe.compiler import Plan, compile_recipe
from llm_recipe.compiler.plan_types import StagePlan
from llm_recipe.compiler.status import read_manifest
from llm_recipe.compiler.workspace_status import (
    GATE_FAILED,
    RUNNING,
    StageState,
    key_metrics,
    lock_holder,
    short_number,
    short_time,
    short_wall,
    stage_path,
    workspace_status,
)
from llm_recipe.errors import RecipeError

STYLE = {"fresh": "green", "stale": "yellow", "missing": "cyan", "partial": "magenta",
         "blocked": "dim", RUNNING: "bold blue", GATE_FAILED: "bold red"}
POLL_S = 0.25
"""How often ``logs -f`` looks for new lines (and, every few polls, at the lock)."""


def _plan(args: argparse.Namespace) -> Plan:
    return compile_recipe(Path(args.file), profiles=args.profile, overrides=args.overrides,
                          require_files=False)


def status_command(args: argparse.Namespace) -> int:
    root = Path.cwd()
    plan = _plan(args)
    states = workspace_status(plan, root)
    if args.json:
        recipe = plan.recipe
        print(json.dumps({
            "recipe": recipe["name"], "file": recipe["file"], "profiles": recipe["profiles"],
            "overrides": recipe["overrides"], "fingerprint": recipe["fingerprint"],
            "workspace": plan.workspace, "stages": [s.to_dict() for s in states],
        }, indent=2, allow_nan=False))
        return 0
    _print_status(plan, states, args)
    return 0


def state_label(state: StageState) -> str:
    return "gate failed" if state.state == GATE_FAILED else state.state


def progress_text(state: StageState) -> str:
    if state.step is None:
        return ""
    if state.max_steps and state.finished is None:  # running or interrupted: of how many
        return f"{state.step}/{state.max_steps}"
    return str(state.step)


def metrics_text(state: StageState) -> str:
    return " · ".join(f"{name} {short_number(value)}" for name, value in key_metrics(state))


def _print_status(plan: Plan, states: list[StageState], args: argparse.Namespace) -> None:
    from rich.markup import escape
    from rich.table import Table

    from llm_recipe.report import make_console

    console = make_console()
    recipe = plan.recipe
    profiles = f"  profiles: {', '.join(recipe['profiles'])}" if recipe["profiles"] else ""
    console.print(f"[bold]{escape(recipe['name'])}[/]  {escape(recipe['file'])}"
                  f"{escape(profiles)}  → {escape(plan.workspace)}/", highlight=False)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("stage", "kind", "status", "step", "wall", "last metrics", "finished"):
        table.add_column(column, overflow="fold")
    for state in states:
        label = f"[{STYLE.get(state.state, 'white')}]{state_label(state)}[/]"
        if state.reason:
            label += f" ({escape(state.reason)})"
        table.add_row(escape(state.name), state.kind, label, progress_text(state),
                      short_wall(state.wall_s), escape(metrics_text(state)),
                      short_time(state.finished, today=True) if state.finished else "")
    console.print(table, highlight=False)
    counts: dict[str, int] = {}
    for state in states:
        counts[state_label(state)] = counts.get(state_label(state), 0) + 1
    console.print(", ".join(f"{n} {label}" for label, n in counts.items()), highlight=False)
    command = _command(args)
    for state in states:
        if state.state == RUNNING:
            console.print(f"follow {escape(state.name)}: {escape(command('logs'))} "
                          f"{escape(state.name)} -f", highlight=False)
            break


def _command(args: argparse.Namespace):
    from functools import partial

    from llm_recipe.command_line import recipe_command

    return partial(recipe_command, args)


def _stage(plan: Plan, name: str) -> StagePlan:
    from llm_recipe.runtime.stage_output import stage_named

    return stage_named(plan, name)


def logs_command(args: argparse.Namespace) -> int:
    """Print a stage's train.log; with ``--follow``, keep printing until its run ends."""
    root = Path.cwd()
    plan = _plan(args)
    stage = _stage(plan, args.stage)
    directory = stage_path(root, stage.dir)
    log = directory / "train.log"
    out = sys.stdout
    try:
        if not log.exists() and lock_holder(directory) is None:
            raise RecipeError(
                f"stage {stage.name} has not run: there is no {Path(stage.dir) / 'train.log'}",
                hint=f"run it: {_command(args)('run')}")
        if not args.follow:
            _print_file(log, out, args.lines)
            return 0
        return _follow(stage, directory, log, out, args.lines)
    except KeyboardInterrupt:
        return 130


def _open_log(log: Path) -> int | None:
    """A read-only descriptor of train.log (never through a symbolic link), None if absent."""
    try:
        return os.open(log, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RecipeError(f"{log} is a symbolic link; the runtime never writes one, so "
                              "it is not read", hint="remove the link") from None
        raise


def _start_offset(fd: int, lines: int | None) -> int:
    """Where printing starts: 0, or the start of the last ``lines`` lines."""
    size = os.fstat(fd).st_size
    if lines is None:
        return 0
    if lines <= 0:
        return size
    block, end, found = 64 * 1024, size, 0
    while end > 0:
        start = max(0, end - block)
        data = os.pread(fd, end - start, start)
        # A trailing newline ends the last line; it does not start one.
        for index in range(len(data) - 1, -1, -1):
            if data[index] == 0x0A and start + index != size - 1:
                found += 1
                if found == lines:
                    return start + index + 1
        end = start
    return 0


def _print_file(log: Path, out: TextIO, lines: int | None) -> None:
    fd = _open_log(log)
    if fd is None:
        return
    try:
        offset = _start_offset(fd, lines)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            data = os.pread(fd, 1 << 20, offset)
            if not data:
                break
            offset += len(data)
            out.write(decoder.decode(data))
        out.write(decoder.decode(b"", final=True))
        out.flush()
    finally:
        os.close(fd)


def _follow(stage: StagePlan, directory: Path, log: Path, out: TextIO,
            lines: int | None) -> int:
    """``tail -F`` of train.log until the stage's run ends.

    The run has ended when nobody holds the stage's lock and its manifest is written
    (the runtime writes the manifest, then the log's last line, then releases the lock).
    A holder that goes away without a manifest is a run that failed or was stopped:
    its last lines are printed, the exit code is 1. A new run truncates or replaces the
    log; the follower starts again from its beginning, like ``tail -F``.
    """
    fd: int | None = None
    identity: tuple[int, int] | None = None
    offset = 0
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    seen_holder = False
    announced = False
    polls = 0
    try:
        while True:
            if fd is None:
                fd = _open_log(log)
                if fd is not None:
                    info = os.fstat(fd)
                    identity = (info.st_dev, info.st_ino)
                    offset = _start_offset(fd, lines)
                    lines = None  # a log that replaces this one is printed whole
            if fd is not None:
                offset = _drain(fd, offset, decoder, out)
                fd, offset = _reopen_if_replaced(fd, log, identity, offset)
                if fd is None:
                    continue  # read the new file at once
            # Judge the lock every poll while nobody holds it, every second otherwise.
            if seen_holder and polls % 4:
                polls += 1
                time.sleep(POLL_S)
                continue
            polls += 1
            holder = lock_holder(directory)
            if holder is not None:
                seen_holder = True
            else:
                manifest = read_manifest(directory)
                complete = manifest is not None and manifest.get("status") == "complete"
                if complete:
                    if fd is not None:
                        _drain(fd, offset, decoder, out)
                    out.write(decoder.decode(b"", final=True))
                    out.flush()
                    return 0
                if seen_holder:
                    if fd is not None:
                        _drain(fd, offset, decoder, out)
                    out.flush()
                    print(f"recipe logs: the run of {stage.name} ended without completing "
                          "(no manifest was written)", file=sys.stderr)
                    return 1
                if not announced:
                    announced = True
                    out.flush()
                    print(f"recipe logs: {stage.name} is not running; waiting for a run "
                          "(Ctrl-C to stop)", file=sys.stderr)
            time.sleep(POLL_S)
    finally:
        if fd is not None:
            os.close(fd)


def _drain(fd: int, offset: int, decoder: codecs.IncrementalDecoder, out: TextIO) -> int:
    while True:
        data = os.pread(fd, 1 << 20, offset)
        if not data:
            out.flush()
            return offset
        offset += len(data)
        out.write(decoder.decode(data))


def _reopen_if_replaced(fd: int, log: Path, identity: tuple[int, int] | None,
                        offset: int) -> tuple[int | None, int]:
    """Close ``fd`` when train.log was replaced (a clean start) or truncated."""
    try:
        now = os.stat(log, follow_symlinks=False)
    except FileNotFoundError:
        now = None
    replaced = now is None or (now.st_dev, now.st_ino) != identity
    truncated = os.fstat(fd).st_size < offset
    if replaced or truncated:
        os.close(fd)
        return None, 0
    return fd, offset
