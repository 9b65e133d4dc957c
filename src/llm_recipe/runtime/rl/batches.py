"""Batch bookkeeping for a rollout: how the questions are cut into batches, how each
finished batch is committed as a checkpoint folder, and how an interrupted run is read
back.

Kept apart from the rollout stage because it is the resume contract, and it holds
whatever the batches contain: each finished batch ``k`` (1-based) is written as
``checkpoints/checkpoint-<k>/records.jsonl`` (its questions' rows) with ``files.json``
(:func:`commit_batch`), then ``checkpoints/latest`` names it. A resumed run reads
checkpoint-1..k (:func:`restore_batches`), checking every folder's files against
``files.json`` and its rows against its batch's questions and sample count; a damaged or
missing one is generated again (with the same seed:
:func:`llm_recipe.runtime.rl.generation.batch_seed`, a function of the stage seed and the
batch index alone, so it comes out the same batch). :func:`rows_in_order` then gives
every question exactly once, in question order.

Files and JSON only: no torch and no model, so resume is tested with a fake generator.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_recipe.runtime.checkpoints import (
    LATEST,
    checkpoint_problem,
    record_files,
    record_step,
    write_pointer,
)
from llm_recipe.runtime.workspace import atomic_dir

if TYPE_CHECKING:
    from llm_recipe.runtime.rl.prompts import Question

RECORDS_FILE = "records.jsonl"


def batches_of(questions: Sequence[Question], size: int) -> list[list[Question]]:
    return [list(questions[i:i + size]) for i in range(0, len(questions), size)]


def commit_batch(checkpoints: Path, k: int, rows: Sequence[dict[str, Any]],
                 latest: int) -> int:
    """Publish batch ``k`` (1-based) as checkpoint-k; move ``latest`` forward only.

    Returns the step ``latest`` now names.
    """
    folder = checkpoints / f"checkpoint-{k}"
    with atomic_dir(folder) as tmp:
        (tmp / RECORDS_FILE).write_text(jsonl(rows), "utf-8")
        record_files(tmp)
    if k > latest:
        write_pointer(checkpoints, LATEST, folder, step=k)
        return k
    return latest


def restore_batches(checkpoints: Path, resume_from: Path | None,
                    batches: Sequence[Sequence[Question]],
                    per_question: int) -> tuple[dict[int, list[dict[str, Any]]], list[str], int]:
    """(rows by 0-based batch index, notes for the log, latest step) of an interrupted run.

    Every checkpoint-j with j <= k (k: the one resumed from) is checked: its files
    against files.json, its rows against the batch's questions and sample count. A
    damaged or missing one is left out (and named in the notes): it is generated again.
    """
    if resume_from is None:
        return {}, [], 0
    k = min(record_step(resume_from), len(batches))
    done: dict[int, list[dict[str, Any]]] = {}
    notes = []
    for j in range(1, k + 1):
        folder = checkpoints / f"checkpoint-{j}"
        problem = ("is missing" if not folder.is_dir()
                   else _damage(checkpoint_problem(folder))
                   or _records_problem(folder, batches[j - 1], per_question))
        if problem:
            notes.append(f"[rollout] checkpoint-{j} {problem}: batch {j} is generated again")
        else:
            done[j - 1] = read_records(folder)
    return done, notes, k


def _damage(problem: str | None) -> str | None:
    return f"is damaged ({problem})" if problem else None


def _records_problem(folder: Path, batch: Sequence[Question], per_question: int) -> str | None:
    try:
        rows = read_records(folder)
    except (OSError, ValueError):
        return f"has an unreadable {RECORDS_FILE}"
    ids = [row.get("question_id") if isinstance(row, dict) else None for row in rows]
    if ids != [q.id for q in batch]:
        return "holds other questions than its batch"
    if any(not isinstance(row.get("samples"), list) or len(row["samples"]) != per_question
           for row in rows):
        return f"does not hold {per_question} samples per question"
    return None


def read_records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in
            (folder / RECORDS_FILE).read_text("utf-8").splitlines() if line.strip()]


def jsonl(rows: Sequence[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def rows_in_order(done: dict[int, list[dict[str, Any]]], count: int) -> list[dict[str, Any]]:
    """The rows of batches 0..count-1 (0-based, all of them done), batch after batch:
    every question once, in question order."""
    return [row for index in range(count) for row in done[index]]
