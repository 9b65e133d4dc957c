"""``recipe export``: a finished stage's model as a standalone Hugging Face folder.

What leaves the workspace must load without llm-recipe: safetensors weights (never
pickles), ``config.json``, ``generation_config.json``, the tokenizer with its chat
template, and a README.md model card (:mod:`llm_recipe.runtime.model_card`) that says
where it came from. The model is loaded the way a downstream stage would load it
(:mod:`llm_recipe.runtime.stage_output`, which walks :mod:`llm_recipe.runtime.loading`),
so an export is exactly what the next stage would have trained from.

Three outputs, three answers:

- full weights: loaded and saved again (self-contained, safetensors), ``--merge`` a no-op;
- a LoRA adapter: the adapter and the card naming its base, or with ``--merge`` one full
  model (``merge_and_unload``). A QLoRA adapter is merged into its base loaded in the
  stage's compute dtype, not 4-bit: merging into 4-bit weights would round the sum back
  to 4 bits, and a 4-bit checkpoint needs bitsandbytes to load;
- a continual patch: refused. The patch is a gated, non-linear sidecar added to each
  block's output (``h + s * sigmoid(w.h + b) * U gelu(D h)``); no weight of a standard
  architecture can hold it, so there is no Hugging Face model to write.

The folder is written into a temporary sibling and renamed into place at the end: a
crash or Ctrl-C leaves the destination as it was. torch is imported inside functions;
the module itself is torch-free (``recipe plan`` imports the CLI, not this).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_recipe.compiler.plan import Plan
from llm_recipe.errors import RecipeError
from llm_recipe.runtime.integrity import stage_path
from llm_recipe.runtime.model_card import (
    ADAPTER,
    FULL,
    MERGED,
    CardFacts,
    load_snippet,
    model_card,
)
from llm_recipe.runtime.stage_output import FinishedStage, finished_stage, stage_named

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
"""Weight files that unpickle on load: an export never holds one."""


@dataclass(frozen=True)
class Exported:
    """What ``recipe export`` wrote, for printing."""

    out: Path
    stage: str
    kind: str
    fingerprint: str
    content: str
    """:data:`~llm_recipe.runtime.model_card.FULL`, ``MERGED`` or ``ADAPTER``."""
    files: tuple[tuple[str, int], ...]
    """(path relative to ``out``, size in bytes), sorted."""
    notes: tuple[str, ...] = ()
    load: tuple[str, ...] = ()
    """The card's load snippet."""

    @property
    def merged(self) -> bool:
        return self.content == MERGED

    @property
    def load_line(self) -> str:
        """The snippet's line that loads the model (for a one-line hint)."""
        line = next((x for x in self.load if "model = " in x), self.load[-1] if self.load else "")
        return line.split("  #")[0]

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "stage": self.stage, "kind": self.kind,
                "fingerprint": self.fingerprint, "content": self.content,
                "merged": self.merged,
                "files": [{"path": name, "bytes": size} for name, size in self.files],
                "notes": list(self.notes)}


def check_destination(out: Path, root: Path, workspace: Path, *, force: bool) -> None:
    """Refuse a destination that would lose data: a non-empty folder without ``--force``,
    a file, a link, or (even with ``--force``) the working directory, the workspace or a
    folder holding either, or a folder inside the workspace (stage outputs live there)."""
    if out.is_symlink():
        raise RecipeError(f"{out} is a symbolic link", hint="name a real folder with -o")
    if out.exists() and not out.is_dir():
        raise RecipeError(f"{out} exists and is not a folder", hint="name a folder with -o")
    resolved, ws = out.resolve(), workspace.resolve()
    for protected in (root.resolve(), ws):
        if resolved == protected or protected.is_relative_to(resolved):
            raise RecipeError(f"{out} holds the workspace or the working directory; "
                              "export refuses to write there", hint="name a new folder with -o")
    if resolved.is_relative_to(ws):
        raise RecipeError(f"{out} is inside the recipe's workspace ({workspace})",
                          hint="export outside the workspace, e.g. -o exported/NAME")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RecipeError(f"{out} exists and is not empty",
                          hint="choose another folder, or --force to replace it")


def refuse_patch(plan: Plan, name: str, *, merge: bool) -> None:
    """A continual patch cannot be written as a standard model: say why and what to do."""
    stage = stage_named(plan, name)
    if stage.output.type != "patch":
        return
    asked = "merged into its base" if merge else "exported as a Hugging Face model"
    raise RecipeError(
        f"stage {name} ({stage.kind}) produced a continual patch, which cannot be {asked}: "
        "the patch adds a gated non-linear term to each block's output "
        "(h + s*sigmoid(w.h + b)*U gelu(D h)), which no weight of a standard architecture "
        "holds, so the result would not be a standard architecture",
        expected="a stage whose output is full weights or a LoRA adapter",
        hint=f"use the patch in the workspace ({stage.output.path}) with its base "
        f"'{stage.output.base}' (recipe chat/generate, an eval stage), or train with a "
        "LoRA adapter (adapter: {type: lora}) or full fine-tuning to get an exportable model")


def refuse_lone_adapter(plan: Plan, name: str, *, merge: bool) -> None:
    """An adapter on random-init weights cannot be exported alone: its base was made at
    run time and saved nowhere, so nothing could load it. ``--merge`` can."""
    stage = stage_named(plan, name)
    base = stage.output.base
    entry = plan.models.get(base or "")
    if merge or stage.output.type != "adapter" or not entry or "init" not in entry:
        return
    raise RecipeError(
        f"stage {name}'s adapter sits on '{base}', random-init weights made at run time and "
        "saved nowhere: the adapter alone could not be loaded",
        hint=f"--merge writes one full model (the adapter folded into '{base}')")


def export_stage(plan: Plan, name: str, root: Path, out: Path, *, merge: bool = False,
                 force: bool = False, run_hint: str,
                 warn: Callable[[str], None] = lambda _: None) -> Exported:
    """Write stage ``name``'s model to ``out`` (see the module docstring); ``warn`` gets
    what the user should hear while it runs (a stale output)."""
    refuse_patch(plan, name, merge=merge)
    refuse_lone_adapter(plan, name, merge=merge)
    finished = finished_stage(plan, name, root, run_hint=run_hint)
    check_destination(out, root, stage_path(root, plan.workspace), force=force)
    if finished.stale_reason:
        warn(f"note: stage {name}'s output is stale ({finished.stale_reason}); exporting "
             f"the output on disk (fingerprint {finished.fingerprint[:12]})")
    from llm_recipe.runtime.quiet import quiet_libraries

    quiet_libraries()
    model, tokenizer = _load(finished)
    notes: list[str] = []  # printed, and written in the card
    content = FULL
    if finished.stage.output.type == "adapter":
        content = MERGED if merge else ADAPTER
        if merge:
            model = _merged(finished, model, notes)
    elif merge:
        notes.append(f"--merge: stage {name} saved full weights; there is no adapter to "
                     "merge, the model is exported as it is")
    stale = () if not finished.stale_reason else (
        f"stale: the recipe now describes another config for this stage "
        f"({finished.stale_reason}); this is the output on disk, made by the settings below",)
    facts = CardFacts(out=str(out), content=content, notes=(*stale, *notes))
    card = model_card(plan, finished.stage, root, finished.manifest, facts)

    def write(folder: Path) -> None:
        _save(model, tokenizer, folder, adapter=content == ADAPTER)
        (folder / "README.md").write_text(card, "utf-8")

    files = write_atomically(out, write)
    if content == ADAPTER:
        notes.append("this is the adapter alone; --merge writes one full model "
                     "(no peft needed to load it)")
    return Exported(out=out, stage=name, kind=finished.stage.kind,
                    fingerprint=finished.fingerprint, content=content, files=files,
                    notes=tuple(notes),
                    load=tuple(load_snippet(str(out), content, finished.stage.kind)))


def _load(finished: FinishedStage) -> tuple[Any, Any]:
    """(model, tokenizer): a reward model as the one-score classifier it is, the rest as
    causal LMs, both exactly as a downstream stage loads them."""
    from llm_recipe.runtime.stage_output import context, load_output

    if finished.stage.kind != "reward_model":
        return load_output(finished)
    from llm_recipe.runtime.loading import sequence_classifier

    model, tokenizer = sequence_classifier(context(finished), finished.as_input(),
                                           trainable=False)
    model.eval()
    return model, tokenizer


def _merged(finished: FinishedStage, model: Any, notes: list[str]) -> Any:
    """The adapter folded into its base (``merge_and_unload``); a QLoRA adapter's base is
    the full-precision one, the result in the stage's compute dtype."""
    import torch

    from llm_recipe.runtime import compute

    config = finished.manifest.get("config")
    adapter = (config if isinstance(config, dict) else finished.stage.config).get("adapter")
    merged = model.merge_and_unload()
    if isinstance(adapter, dict) and adapter.get("type") == "qlora":
        dtype = compute.compute_dtype(finished.stage.compute)
        merged = merged.to(getattr(torch, dtype))
        notes.append(f"QLoRA: the adapter was merged into a dequantised base (the base "
                     f"loaded in {dtype}, not 4-bit); it was trained against the 4-bit "
                     "base, so outputs differ slightly from the quantised model's")
    return merged


def _save(model: Any, tokenizer: Any, folder: Path, *, adapter: bool) -> None:
    """Weights (safetensors only), config, generation config and tokenizer into ``folder``."""
    if adapter:
        model.save_pretrained(str(folder), safe_serialization=True)
    else:
        model.save_pretrained(str(folder))  # transformers 5: always safetensors
        generation = getattr(model, "generation_config", None)
        if generation is not None and not (folder / "generation_config.json").exists():
            generation.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    pickles = [p.name for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise RecipeError(f"the export would hold pickled weights ({', '.join(pickles)})",
                          hint="report this: exports are safetensors only")


def write_atomically(out: Path, write: Callable[[Path], None]) -> tuple[tuple[str, int], ...]:
    """Run ``write`` into a temporary sibling of ``out``, then rename it to ``out``
    (replacing what is there); the temporary folder is removed on any failure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}"
    old = out.parent / f".{out.name}.replaced-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return tuple(sorted((str(p.relative_to(out)), p.stat().st_size)
                        for p in out.rglob("*") if p.is_file()))
