"""Human output of a plan: a table of stages, the lineage as a tree, warnings and misfits.

Only the CLI calls this; everything it shows comes from the Plan, so the JSON
output and the table never disagree.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from llm_recipe.compiler import mixtures
from llm_recipe.compiler.estimate import summarise
from llm_recipe.compiler.plan import Plan, StagePlan
from llm_recipe.matrix_view import matrix_summary, matrix_table

STATUS_STYLE = {
    "fresh": "green",
    "stale": "yellow",
    "missing": "cyan",
    "partial": "magenta",
    "blocked": "red",
}


class _Console(Console):
    """rich's Console, except that a closed pipe (``recipe plan | head -1``) raises
    BrokenPipeError, which the CLI turns into a quiet exit 0, instead of rich's exit 1."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


def make_console(*, stderr: bool = False, quiet: bool = False) -> Console:
    """A console that is wide enough for plan tables when output is piped to a file."""
    console = _Console(stderr=stderr, quiet=quiet)
    return console if console.is_terminal else _Console(stderr=stderr, quiet=quiet, width=140)


def print_plan(plan: Plan, console: Console | None = None) -> None:
    console = console or make_console()
    recipe = plan.recipe
    profiles = f"  profiles: {', '.join(recipe['profiles'])}" if recipe["profiles"] else ""
    console.print(
        f"[bold]{recipe['name']}[/]  {recipe['file']}{profiles}  "
        f"plan {recipe['fingerprint'][:12]}  → {plan.workspace}/"
    )
    console.print(stage_table(plan))
    matrix = matrix_table(plan)
    if matrix is not None:  # which copy of each stage a variant uses, what is shared
        console.print(matrix_summary(plan))
        console.print(matrix)
    console.print(lineage_tree(plan))
    for stage in plan.stages:
        misfit = _misfit(stage)
        if misfit:
            console.print(misfit)
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    if plan.env:
        console.print(f"environment needed at run time: {', '.join(plan.env)}")


def stage_table(plan: Plan) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("#", "stage", "kind", "inputs → output", "launcher", "estimate", "status"):
        table.add_column(column, overflow="fold")
    for stage in plan.stages:
        table.add_row(
            str(stage.index + 1),
            stage.name,
            stage.kind,
            escape(_flow(stage)),
            _launcher(stage),
            summarise(stage.estimate),
            _status(stage),
        )
    return table


def _flow(stage: StagePlan) -> str:
    refs = ", ".join(dict.fromkeys(i.ref for i in stage.inputs))
    output = stage.output
    what = output.type
    if output.format:
        what = f"{output.type}[{output.format}]"
    elif output.base:
        what = f"{output.type} on {output.base}"
    return f"{refs} → {what}"


def _launcher(stage: StagePlan) -> str:
    launcher = stage.launcher
    name = (
        launcher["name"] if not launcher.get("inner") else f"{launcher['name']}/{launcher['inner']}"
    )
    processes = launcher["processes"]
    return name if processes == 1 else f"{name} ×{processes}"


def _status(stage: StagePlan) -> str:
    state = stage.status["state"]
    reason = stage.status.get("reason")
    text = f"[{STATUS_STYLE.get(state, 'white')}]{state}[/]"
    return f"{text} ({reason})" if reason else text


def lineage_tree(plan: Plan) -> Tree:
    """Each stage under its primary input (policy, model, rollouts...); other inputs in brackets."""
    tree = Tree("[bold]lineage[/]")
    nodes: dict[str, Tree] = {}
    children: dict[str, list[StagePlan]] = {}
    roots: list[StagePlan] = []
    for stage in plan.stages:
        primary = _primary(stage)
        if primary is None:
            roots.append(stage)
        else:
            children.setdefault(primary, []).append(stage)
    for name in [*plan.models, *plan.datasets]:
        if name in children:
            nodes[name] = tree.add(f"[bold]{name}[/]  {_source(plan, name)}")
    for stage in plan.stages:
        primary = _primary(stage)
        parent = tree if primary is None else nodes.get(primary, tree)
        nodes[stage.name] = parent.add(_stage_label(stage, primary))
        for item in stage.inputs:
            entry = plan.datasets.get(item.ref) if item.producer is None else None
            if mixtures.is_mixture(entry):  # what it mixes, and how many of each
                nodes[stage.name].add(f"[dim]mixture {escape(item.ref)}: "
                                      f"{escape(mixtures.describe(entry))}[/]")
    return tree


def _primary(stage: StagePlan) -> str | None:
    singles = [i for i in stage.inputs if "." not in i.field and i.field[-1:] != "]"]
    return singles[0].ref if singles and stage.kind != "eval" else None


def _stage_label(stage: StagePlan, primary: str | None) -> str:
    others: dict[str, list[str]] = {}
    for index, item in enumerate(stage.inputs):
        if index == 0 and item.ref == primary:
            continue
        field = item.field.split(".")[0] if item.field.split(".")[-1].isdigit() else item.field
        others.setdefault(field, []).append(item.ref)
    carved = stage.config.get("validation_split")
    if carved:
        size = carved["size"]
        amount = f"{size * 100:g}%" if size < 1 else f"{int(size):,} rows"
        seed = carved.get("seed", stage.config.get("seed"))
        others.setdefault("validation", []).append(f"{amount} of data, seed {seed}")
    extra = "; ".join(f"{field}: {', '.join(refs)}" for field, refs in others.items())
    extra = f"  ({extra})" if extra else ""
    output = _flow(stage).split(" → ")[-1]
    settings = _settings(stage)
    return escape(f"{stage.name}  {stage.kind} → {output}{extra}"
                  + (f"  [{settings}]" if settings else ""))


def _settings(stage: StagePlan) -> str:
    """The training settings that change how a stage runs or ends, in a few words."""
    train = stage.config.get("train") or {}
    said = []
    stopping = train.get("early_stopping")
    if stopping:
        said.append(f"early stopping on {stopping['metric']}, patience {stopping['patience']}")
    per_epoch = [k.split("_")[0] for k in ("eval_every", "save_every") if train.get(k) == "epoch"]
    if per_epoch:
        said.append(" and ".join(per_epoch) + " every epoch")
    if train.get("neftune_noise_alpha"):
        said.append(f"NEFTune alpha {train['neftune_noise_alpha']}")
    if train.get("resume_from"):
        said.append(f"resume from {train['resume_from']}")
    distributed = stage.compute.get("distributed") or {}
    for key in ("deepspeed_config", "fsdp_config"):
        if distributed.get(key):
            said.append(f"{key.split('_')[0]} {distributed[key]}")
    push = stage.config.get("push_to_hub")
    if push:
        said.append(f"push to hub {push['repo']}")
    return "; ".join(said)


def _source(plan: Plan, name: str) -> str:
    entry: dict[str, Any] = plan.models.get(name) or plan.datasets.get(name) or {}
    template = (entry.get("tokenizer") or {}).get("chat_template")
    if template:
        shown = "custom" if "{" in template else template
        return f"{_source_only(entry)}, chat template {shown}"
    return _source_only(entry)


def _source_only(entry: dict[str, Any]) -> str:
    if "hub" in entry:
        at = f"@{entry['revision']}" if entry.get("revision") else ""
        return f"hub {entry['hub']}{at}"
    if "path" in entry:
        return f"path {entry['path']}"
    if "init" in entry:
        init = entry["init"]
        return f"init {init['architecture']} {init.get('size', '')}".rstrip()
    if "builtin" in entry:
        return f"builtin {entry['builtin']} (n={entry.get('n', 'default')})"
    if mixtures.is_mixture(entry):
        return f"mixture: {mixtures.describe(entry)}"
    return ""


def _misfit(stage: StagePlan) -> str | None:
    estimate = stage.estimate
    if estimate.get("fits") is not False:
        return None
    need = estimate["memory_gb"]["total"]
    have = estimate["gpu_memory_gb"]
    lines = [
        f"[red]{stage.name}: will not fit[/]: needs ~{need:.1f} GiB per GPU, "
        f"a GPU has {have:g} GiB."
    ]
    for suggestion in estimate.get("suggestions", []):
        lines.append(f"  would fit: {suggestion}")
    return "\n".join(lines)
