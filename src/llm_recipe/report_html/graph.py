"""The lineage graph laid out in pure Python, drawn as SVG by the report's template.

A small Sugiyama layout, enough for pipelines of a few to a few dozen stages and no
dependency (graphviz is not on every machine, and the report must build everywhere):

1. **layers**: a stage sits one column right of its furthest input (longest path from
   the sources); a model or dataset sits one column left of its first consumer, so a
   dataset used only by a late stage does not stretch across the page;
2. **virtual nodes**: an edge spanning several columns gets a point in each column it
   crosses, so ordering sees it and it is routed between nodes rather than through them;
3. **order**: barycenter sweeps, down and up, keeping the order with the fewest
   crossings (counted exactly between each pair of adjacent columns);
4. **coordinates**: columns as wide as their widest label; each column's nodes stacked
   and centred; edges as cubic curves through their virtual points.

The result is plain data (numbers and strings): the template writes the SVG, so every
label goes through Jinja's autoescape like the rest of the page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from llm_recipe.compiler.dag import edges as plan_edges
from llm_recipe.compiler.plan_types import Plan

NODE_H = 58.0
VIRTUAL_H = 12.0
V_GAP = 20.0
H_GAP = 64.0
MARGIN = 16.0
NAME_CHAR_W = 7.6
CHAR_W = 6.3
"""Average widths of a bold 12.5px and a plain 11px sans-serif character: labels are
measured from their length, not rendered."""
MAX_CHARS = 34
SWEEPS = 8


@dataclass
class Node:
    id: str
    lines: list[str]
    cls: str
    title: str
    layer: int = 0
    virtual: bool = False
    x: float = 0.0
    y: float = 0.0
    w: float = 0.0
    h: float = NODE_H


@dataclass
class Edge:
    source: str
    target: str
    label: str
    points: list[str] = field(default_factory=list)
    d: str = ""
    label_x: float = 0.0
    label_y: float = 0.0


@dataclass
class Layout:
    width: float
    height: float
    nodes: list[Node]
    edges: list[Edge]
    crossings: int


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"


def _source_text(entry: dict[str, Any]) -> str:
    for key in ("hub", "path", "builtin"):
        if isinstance(entry.get(key), str):
            return f"{key} {entry[key]}"
    init = entry.get("init")
    if isinstance(init, dict):
        return f"init {init.get('architecture', '')} {init.get('size', '')}".rstrip()
    members = entry.get("mixture")
    if isinstance(members, list):
        return "mixture of " + " + ".join(str(m.get("data")) for m in members)
    return ""


def lineage_layout(plan: Plan, states: dict[str, str] | None = None) -> Layout:
    """Lay out the plan's sources and stages; ``states`` colours stages by status."""
    states = states or {}
    merged: dict[tuple[str, str], list[str]] = {}
    for source, target, name in plan_edges(plan):
        merged.setdefault((source, target), []).append(name)
    nodes: dict[str, Node] = {}
    used = {source for source, _ in merged}
    for name, entry in plan.models.items():
        if name in used:
            nodes[name] = Node(name, [name, "model", _source_text(entry)], "source model",
                               f"model {name}: {_source_text(entry)}")
    for name, entry in plan.datasets.items():
        if name in used:
            what = f"dataset[{entry.get('format', '?')}]"
            nodes[name] = Node(name, [name, what, _source_text(entry)], "source dataset",
                               f"dataset {name}: {_source_text(entry)}")
    for stage in plan.stages:
        state = states.get(stage.name, stage.status.get("state", "missing"))
        shown = "gate failed" if state == "gate_failed" else state
        output = stage.output.type + (f"[{stage.output.format}]" if stage.output.format else "")
        nodes[stage.name] = Node(stage.name, [stage.name, f"{stage.kind} → {output}", shown],
                                 f"stage state-{state}",
                                 f"stage {stage.name} ({stage.kind}): {shown}")
    edges = [Edge(source, target, ", ".join(dict.fromkeys(_field(n) for n in names)))
             for (source, target), names in merged.items()
             if source in nodes and target in nodes]
    _layers(plan, nodes, edges)
    chains = _virtualize(nodes, edges)
    order = _order(nodes, chains)
    width, height = _coordinates(nodes, order)
    starts, ends = _ports(nodes, chains)
    for index, (edge, chain) in enumerate(zip(edges, chains, strict=True)):
        _route(edge, [nodes[n] for n in chain], starts[index], ends[index])
    crossings = _count(order, chains)
    real = [n for n in nodes.values() if not n.virtual]
    return Layout(round(width, 1), round(height, 1), real, edges, crossings)


def _layers(plan: Plan, nodes: dict[str, Node], edges: list[Edge]) -> None:
    inputs: dict[str, list[str]] = {}
    for edge in edges:
        inputs.setdefault(edge.target, []).append(edge.source)
    stages = {s.name for s in plan.stages}
    for stage in plan.stages:  # topological order
        ups = [nodes[u].layer for u in inputs.get(stage.name, ()) if u in stages]
        has_source = any(u not in stages for u in inputs.get(stage.name, ()))
        nodes[stage.name].layer = max([u + 1 for u in ups] + [1 if has_source else 0])
    for name, node in nodes.items():
        if name not in stages:
            consumers = [nodes[e.target].layer for e in edges if e.source == name]
            node.layer = max(0, min(consumers) - 1) if consumers else 0


def _virtualize(nodes: dict[str, Node], edges: list[Edge]) -> list[list[str]]:
    """Each edge as a chain of node ids, one per column, virtual ones in between."""
    chains = []
    for index, edge in enumerate(edges):
        source, target = nodes[edge.source], nodes[edge.target]
        chain = [edge.source]
        for layer in range(source.layer + 1, target.layer):
            vid = f"\0v{index}:{layer}"
            nodes[vid] = Node(vid, [], "virtual", "", layer=layer, virtual=True, h=VIRTUAL_H)
            chain.append(vid)
        chain.append(edge.target)
        chains.append(chain)
    return chains


def _order(nodes: dict[str, Node], chains: list[list[str]]) -> list[list[str]]:
    depth = max((n.layer for n in nodes.values()), default=0) + 1
    order: list[list[str]] = [[] for _ in range(depth)]
    for name, node in nodes.items():  # insertion order: models, datasets, stages, virtual
        order[node.layer].append(name)
    up: dict[str, list[str]] = {}
    down: dict[str, list[str]] = {}
    for chain in chains:
        for a, b in pairwise(chain):
            down.setdefault(a, []).append(b)
            up.setdefault(b, []).append(a)
    best, best_count = [list(layer) for layer in order], _count(order, chains)
    for sweep in range(SWEEPS):
        layers = range(1, depth) if sweep % 2 == 0 else range(depth - 2, -1, -1)
        neighbours = up if sweep % 2 == 0 else down
        for layer in layers:
            ref = order[layer - 1] if sweep % 2 == 0 else order[layer + 1]
            position = {name: i for i, name in enumerate(ref)}
            current = {name: i for i, name in enumerate(order[layer])}

            def key(name: str, position=position, current=current,
                    neighbours=neighbours) -> tuple[float, int]:
                linked = [position[n] for n in neighbours.get(name, ()) if n in position]
                centre = sum(linked) / len(linked) if linked else float(current[name])
                return centre, current[name]

            order[layer].sort(key=key)
        count = _count(order, chains)
        if count < best_count:
            best, best_count = [list(layer) for layer in order], count
    return best


def _count(order: list[list[str]], chains: list[list[str]]) -> int:
    """Edge crossings between adjacent columns (pairs of segments that swap order)."""
    position = {name: i for layer in order for i, name in enumerate(layer)}
    segments: dict[int, list[tuple[int, int]]] = {}
    layer_of = {name: li for li, layer in enumerate(order) for name in layer}
    for chain in chains:
        for a, b in pairwise(chain):
            segments.setdefault(layer_of[a], []).append((position[a], position[b]))
    total = 0
    for items in segments.values():
        for i, (a1, b1) in enumerate(items):
            for a2, b2 in items[i + 1:]:
                if (a1 - a2) * (b1 - b2) < 0:
                    total += 1
    return total


def _coordinates(nodes: dict[str, Node], order: list[list[str]]) -> tuple[float, float]:
    for node in nodes.values():
        if not node.virtual:
            node.lines = [_clip(line) for line in node.lines if line]
            widths = [len(line) * (NAME_CHAR_W if i == 0 else CHAR_W)
                      for i, line in enumerate(node.lines)]
            node.w = round(max(110.0, max(widths) + 26.0), 1)
    widths = [max((nodes[n].w for n in layer), default=0.0) for layer in order]
    heights = [sum(nodes[n].h for n in layer) + V_GAP * max(0, len(layer) - 1)
               for layer in order]
    tallest = max(heights, default=0.0)
    x = MARGIN
    for layer, column_w, column_h in zip(order, widths, heights, strict=True):
        y = MARGIN + (tallest - column_h) / 2
        for name in layer:
            node = nodes[name]
            node.x = round(x + (column_w - node.w) / 2, 1)
            node.y = round(y, 1)
            y += node.h + V_GAP
        x += column_w + H_GAP
    return x - H_GAP + MARGIN, tallest + 2 * MARGIN


def _field(name: str) -> str:
    """``models.2`` -> ``models``: the position in a list says nothing on a graph."""
    parts = name.split(".")
    while len(parts) > 1 and parts[-1].isdigit():
        parts.pop()
    return ".".join(parts)


def _ports(nodes: dict[str, Node], chains: list[list[str]]) -> tuple[list[float], list[float]]:
    """Where each edge leaves its source and enters its target (y): a node's edges are
    spread along its side in the order of the nodes at their other ends, so edges that
    meet one node neither overlap nor cross there."""
    def centre(name: str) -> float:
        return nodes[name].y + nodes[name].h / 2

    starts = [0.0] * len(chains)
    ends = [0.0] * len(chains)
    for side, result in ((0, starts), (-1, ends)):
        groups: dict[str, list[tuple[float, int]]] = {}
        for index, chain in enumerate(chains):
            other = chain[1] if side == 0 else chain[-2]
            groups.setdefault(chain[side], []).append((centre(other), index))
        for name, items in groups.items():
            node = nodes[name]
            items.sort()
            span = node.h * 0.6
            for k, (_, index) in enumerate(items):
                offset = 0.0 if len(items) == 1 else span * (k / (len(items) - 1) - 0.5)
                result[index] = node.y + node.h / 2 + offset
    return starts, ends


def _route(edge: Edge, chain: list[Node], start_y: float, end_y: float) -> None:
    """A smooth path from the source's right side, through virtual points, to the
    target's left side (the arrowhead ends there)."""
    first, last = chain[0], chain[-1]
    points = [(first.x + first.w, start_y)]
    points += [(n.x + n.w / 2, n.y + n.h / 2) for n in chain[1:-1]]
    points.append((last.x - 2, end_y))
    d = f"M{points[0][0]:.1f},{points[0][1]:.1f}"
    for (x1, y1), (x2, y2) in pairwise(points):
        mid = (x2 - x1) / 2
        d += f" C{x1 + mid:.1f},{y1:.1f} {x2 - mid:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
    edge.d = d
    (x1, y1), (x2, y2) = points[-2], points[-1]
    edge.label_x = round(x1 + (x2 - x1) * 0.5, 1)
    edge.label_y = round(y1 + (y2 - y1) * 0.5 - 4, 1)
