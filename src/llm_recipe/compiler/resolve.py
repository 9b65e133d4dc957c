"""Resolve pass: names -> typed lineage edges, cycle check, topological order.

A stage input names a model, a dataset or another stage. Resolution gives every
name an :class:`Artifact` (what it is: a model, an adapter on a base, a patch on
a base, a dataset of a format, a report), checks each input accepts what it is
given, and orders stages so producers run before consumers. It tolerates
schema-invalid input (it only looks at what it can understand) so reference
errors are reported in the same round as schema errors.

The types it produces and reads (:class:`Artifact`, :class:`Edge`,
:class:`Resolution`) and the predicates over them live in
:mod:`llm_recipe.compiler.lineage`; they are re-exported here.
"""

from __future__ import annotations

import difflib
import heapq
from typing import Any

from llm_recipe.compiler.kinds import (
    ADAPTER,
    DATASET,
    DATASET_OUTPUT_FORMAT,
    METRIC_FORMATS,
    MODEL,
    PATCH,
    REPORT,
    Input,
    Kind,
)
from llm_recipe.compiler.lineage import (
    Artifact,
    Edge,
    Resolution,
    _expand,
    _fits,
    _kind,
    _sections,
)
from llm_recipe.compiler.mixtures import is_mixture, mixture_format
from llm_recipe.compiler.source import SourceMap
from llm_recipe.errors import RecipeError, RecipePath


def resolve(data: dict[str, Any], where: SourceMap) -> tuple[Resolution, list[RecipeError]]:
    """Resolve a composed recipe; returns the resolution and every error found."""
    return _Resolver(data, where).run()


class _Resolver:
    def __init__(self, data: dict[str, Any], where: SourceMap) -> None:
        self.where = where
        self.errors: list[RecipeError] = []
        self.models = _mapping(data.get("models"))
        self.datasets = _mapping(data.get("datasets"))
        self.stages = _mapping(data.get("stages"))
        self.data = data
        self.artifacts: dict[str, Artifact] = {}
        self.edges: dict[str, tuple[Edge, ...]] = {}
        self.collisions: set[str] = set()

    def run(self) -> tuple[Resolution, list[RecipeError]]:
        self.name_entries()
        graph = {name: self.stage_edges(name, stage) for name, stage in self.stages.items()}
        order = self.order(graph)
        for name in order:
            self.type_stage(name)
        self.check_other_refs()
        position = {name: index for index, name in enumerate(order)}
        upstream = {name: tuple(sorted(graph[name], key=position.__getitem__)) for name in order}
        return Resolution(tuple(order), self.artifacts, self.edges, upstream), self.errors

    def name_entries(self) -> None:
        seen: dict[str, str] = {}
        for section, entries in (
            ("models", self.models),
            ("datasets", self.datasets),
            ("stages", self.stages),
        ):
            for name, entry in entries.items():
                if name in seen:
                    self.collisions.add(name)
                    self.errors.append(
                        self.where.error(
                            (section, name),
                            f"'{name}' is already the name of a {seen[name]}",
                            expected="a name no other model, dataset or stage has",
                            hint="models, datasets and stages share one namespace; rename one",
                            key=True,
                        )
                    )
                    continue
                seen[name] = section[:-1]
                if section == "models":
                    self.artifacts[name] = Artifact(MODEL)
                elif section == "datasets":
                    fmt = entry.get("format") if isinstance(entry, dict) else None
                    if is_mixture(entry):  # a mixture is a dataset of its members' format
                        fmt = mixture_format(entry, self.datasets)
                    self.artifacts[name] = Artifact(
                        DATASET, format=fmt if isinstance(fmt, str) else None
                    )

    def stage_edges(self, name: str, stage: Any) -> set[str]:
        """Collect the stage's input edges; return the stages it depends on."""
        kind = _kind(stage)
        if kind is None:
            return set()
        edges = []
        for spec in kind.inputs:
            entries = " or ".join(s[:-1] for s in _sections(spec)[:-1])
            for path, ref in _expand(stage, spec.field):
                where = ("stages", name, *path)
                if isinstance(ref, str) and self.known(ref, where, spec=spec, exclude=name):
                    if ref == name:
                        if name not in self.collisions:  # else the name clash says it all
                            self.errors.append(
                                self.where.error(
                                    where,
                                    f"stage '{name}' consumes its own output",
                                    expected=spec.expected(),
                                    hint=f"name the {entries} or earlier stage it should read",
                                )
                            )
                        continue
                    edges.append(Edge(name, spec.field, path, ref))
        self.edges[name] = tuple(edges)
        deps = {e.ref for e in edges if e.ref in self.stages}
        after = stage.get("after")
        for index, ref in enumerate(after if isinstance(after, list) else []):
            path = ("stages", name, "after", index)
            if isinstance(ref, str) and self.known(ref, path, section="stages", exclude=name):
                deps.add(ref)
        return deps

    def known(
        self,
        ref: str,
        path: RecipePath,
        section: str | None = None,
        *,
        spec: Input | None = None,
        exclude: str | None = None,
    ) -> bool:
        """True if ``ref`` names an entry (of ``section`` only, if given); else report it.

        The error suggests only names that can fit ``spec`` (the input field), never
        ``exclude`` (the stage that asks).
        """
        pools = {"models": self.models, "datasets": self.datasets, "stages": self.stages}
        searched = (section,) if section else tuple(pools)
        if any(ref in pools[s] for s in searched):
            return True
        shown = searched if section or spec is None else _sections(spec)
        names = [n for s in shown for n in pools[s] if n != exclude and self.may_fit(spec, s, n)]
        close = difflib.get_close_matches(ref, names, n=1, cutoff=0.6)
        kinds = [s[:-1] for s in shown]
        what = ", ".join(kinds[:-1]) + " or " + kinds[-1] if len(kinds) > 1 else kinds[0]
        self.errors.append(
            self.where.error(
                path,
                f"no {what} named '{ref}'",
                expected=f"one of: {', '.join(names)}" if names and len(names) <= 12 else None,
                hint=f"did you mean '{close[0]}'?" if close else f"define '{ref}' under {shown[0]}",
            )
        )
        return False

    def may_fit(self, spec: Input | None, section: str, name: str) -> bool:
        """Whether the entry ``name`` of ``section`` can be what ``spec`` accepts.

        Called before stages are typed, so a stage counts if any output its kind
        can produce (with or without an adapter) fits.
        """
        if spec is None:
            return True
        if section != "stages":
            artifact = self.artifacts.get(name)
            return artifact is None or _fits(spec, artifact)
        stage = self.stages[name]
        kind = _kind(stage)
        if kind is None:
            return False
        fmt = DATASET_OUTPUT_FORMAT.get(kind.name)
        outputs = {
            kind.output(stage, {}),
            kind.output(stage, {"policy": ADAPTER, "model": ADAPTER}),
        }
        return any(_fits(spec, Artifact(output, format=fmt)) for output in outputs)

    def order(self, graph: dict[str, set[str]]) -> list[str]:
        """Kahn's algorithm, ties broken by declaration order; report every cycle."""
        position = {name: i for i, name in enumerate(graph)}
        waiting = {name: len(deps) for name, deps in graph.items()}
        consumers: dict[str, list[str]] = {name: [] for name in graph}
        for name, deps in graph.items():
            for dep in deps:
                consumers[dep].append(name)
        ready = [(position[n], n) for n, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            _, name = heapq.heappop(ready)
            order.append(name)
            for consumer in consumers[name]:
                waiting[consumer] -= 1
                if waiting[consumer] == 0:
                    heapq.heappush(ready, (position[consumer], consumer))
        if len(order) < len(graph):
            self.report_cycles({n for n in graph if n not in order}, graph)
        return order

    def report_cycles(self, stuck: set[str], graph: dict[str, set[str]]) -> None:
        reported: set[frozenset[str]] = set()
        for start in sorted(stuck, key=list(graph).index):
            trail = [start]
            while True:
                nxt = min((d for d in graph[trail[-1]] if d in stuck), key=list(graph).index)
                if nxt in trail:
                    cycle = [*trail[trail.index(nxt) :], nxt]
                    break
                trail.append(nxt)
            members = frozenset(cycle)
            if members in reported:
                continue
            reported.add(members)
            first = cycle[0]
            edge = next((e for e in self.edges.get(first, ()) if e.ref == cycle[1]), None)
            path = ("stages", first, *edge.path) if edge else ("stages", first)
            self.errors.append(
                self.where.error(
                    path,
                    f"stages form a cycle: {' -> '.join(cycle)}",
                    hint="a stage can only consume stages that come before it; break one link",
                )
            )

    def type_stage(self, name: str) -> None:
        stage = self.stages[name]
        kind = _kind(stage)
        if kind is None or name not in self.edges:
            return
        single: dict[str, str] = {}
        for edge in self.edges[name]:
            artifact = self.artifacts.get(edge.ref)
            spec = next(s for s in kind.inputs if s.field == edge.field)
            if artifact is None:
                continue
            if not _fits(spec, artifact):
                self.mismatch(edge, spec, artifact)
            elif "[]" not in edge.field:
                single[edge.field] = artifact.type
        self.artifacts[name] = self.output_artifact(name, kind, stage, single)
        self.check_metrics(name, stage)

    def output_artifact(
        self, name: str, kind: Kind, stage: dict[str, Any], inputs: dict[str, str]
    ) -> Artifact:
        produced = kind.output(stage, inputs)
        if produced == DATASET:
            return Artifact(DATASET, format=DATASET_OUTPUT_FORMAT[kind.name], producer=name)
        base = None
        if produced in (ADAPTER, PATCH) and kind.policy_field:
            ref = stage.get(kind.policy_field)
            upstream = self.artifacts.get(ref) if isinstance(ref, str) else None
            if upstream is not None:
                base = upstream.base if upstream.type in (ADAPTER, PATCH) else ref
        return Artifact(produced, base=base, producer=name)

    def mismatch(self, edge: Edge, spec: Input, artifact: Artifact) -> None:
        fitting = [n for n, a in self.artifacts.items() if _fits(spec, a) and n != edge.stage]
        hint = (
            f"names that fit here: {', '.join(fitting[:8])}"
            if fitting
            else f"add a model, dataset or stage that provides {spec.expected()}"
        )
        self.errors.append(
            self.where.error(
                ("stages", edge.stage, *edge.path),
                f"got {artifact.describe(edge.ref)}",
                expected=spec.expected(),
                hint=hint,
            )
        )

    def check_metrics(self, name: str, stage: dict[str, Any]) -> None:
        if stage.get("kind") != "eval" or not isinstance(stage.get("data"), str):
            return
        data = self.artifacts.get(stage["data"])
        explicit = "metrics" in stage
        metrics = stage.get("metrics", ["gsm8k_accuracy"])
        if data is None or data.format is None or not isinstance(metrics, list):
            return
        fitting = [m for m, formats in METRIC_FORMATS.items() if data.format in formats]
        for index, metric in enumerate(metrics):
            formats = METRIC_FORMATS.get(metric) if isinstance(metric, str) else None
            if formats is not None and data.format not in formats:
                self.errors.append(
                    self.where.error(
                        ("stages", name, "metrics", index) if explicit else ("stages", name),
                        f"{'metric' if explicit else 'the default metric'} {metric} cannot be "
                        f"computed on {data.describe(stage['data'])}",
                        expected=f"data of format {' or '.join(sorted(formats))}",
                        hint="choose a metric for this data, or evaluate on another dataset"
                        if explicit
                        else f"set metrics for this data, e.g. metrics: [{', '.join(fitting)}]",
                    )
                )

    def check_other_refs(self) -> None:
        """References outside stages: tokenizer training data, model registration."""
        for name, model in self.models.items():
            train = _dig(model, "tokenizer", "train")
            ref = train.get("data") if isinstance(train, dict) else None
            path = ("models", name, "tokenizer", "train", "data")
            spec = Input("data", frozenset({DATASET}))
            if isinstance(ref, str) and self.known(ref, path, spec=spec):
                self.require(path, ref, spec)
        register = _dig(self.data, "tracking", "register")
        if not isinstance(register, dict):
            return
        stage = register.get("stage")
        path = ("tracking", "register", "stage")
        spec = Input("stage", frozenset({MODEL, ADAPTER, PATCH}))
        if isinstance(stage, str) and self.known(stage, path, section="stages", spec=spec):
            self.require(path, stage, spec)
        gate = register.get("gate")
        report = gate.get("report") if isinstance(gate, dict) else None
        path = ("tracking", "register", "gate", "report")
        spec = Input("report", frozenset({REPORT}))
        if isinstance(report, str) and self.known(report, path, section="stages", spec=spec):
            self.require(path, report, spec)

    def require(self, path: RecipePath, ref: str, spec: Input) -> None:
        artifact = self.artifacts.get(ref)
        if artifact is not None and not _fits(spec, artifact):
            self.errors.append(
                self.where.error(path, f"got {artifact.describe(ref)}", expected=spec.expected())
            )


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dig(node: Any, *keys: str) -> Any:
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node
