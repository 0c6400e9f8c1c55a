"""A task graph drawn as SVG: a layered (Sugiyama) layout by grandalf, boxes and arrows by us.

Nodes an instance has run are marked `visited`, the step it stands at `current`; the page's
stylesheet colours them.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from html import escape

from grandalf.graphs import Edge as LayoutEdge
from grandalf.graphs import Graph, Vertex
from grandalf.layouts import SugiyamaLayout

from okra_sidecar.console.graph import END, START, TaskGraph

__all__ = ["render_svg"]

CHAR_W = 7.2  # average width of a 12 px sans-serif character
NODE_H = 40.0
MARGIN = 24.0
GROUP_PAD = 12.0


@dataclass
class _Box:
    """What grandalf lays out: a box of a size; it writes back the centre as `xy`."""

    w: float
    h: float
    xy: tuple[float, float] = (0.0, 0.0)


@dataclass
class _Route:
    """What grandalf routes an edge through: `setpath` receives its points."""

    points: list[tuple[float, float]] | None = None

    def setpath(self, points: list[tuple[float, float]]) -> None:
        self.points = [(float(x), float(y)) for x, y in points]


def _width(label: str, kind: str) -> float:
    return max(len(label), len(kind)) * CHAR_W + 28.0


def _layout(graph: TaskGraph) -> tuple[dict[str, _Box], list[tuple[str, str, str, _Route]]]:
    vertices = {}
    for node in graph.nodes.values():
        vertex = Vertex(node.id)
        vertex.view = _Box(_width(node.label, node.kind), NODE_H)
        vertices[node.id] = vertex
    edges = []
    routes = []
    for edge in graph.edges:
        if edge.source not in vertices or edge.target not in vertices:
            continue
        layout_edge = LayoutEdge(vertices[edge.source], vertices[edge.target])
        route = _Route()
        layout_edge.view = route
        edges.append(layout_edge)
        routes.append((edge.source, edge.target, edge.label, route))
    layout_graph = Graph(list(vertices.values()), edges)
    offset = 0.0
    # Each connected component side by side; normally there is one.
    for component in layout_graph.C:
        sugiyama = SugiyamaLayout(component)
        sugiyama.yspace = 36
        sugiyama.xspace = 28
        roots = [v for v in component.sV if v.data == START] or None
        sugiyama.init_all(roots=roots)
        sugiyama.draw(3)
        left = min(v.view.xy[0] - v.view.w / 2 for v in component.sV)
        right = max(v.view.xy[0] + v.view.w / 2 for v in component.sV)
        for v in component.sV:
            v.view.xy = (v.view.xy[0] - left + offset, v.view.xy[1])
        for layout_edge in component.sE:
            route = layout_edge.view
            if route.points:
                route.points = [(x - left + offset, y) for x, y in route.points]
        offset += right - left + 2 * MARGIN
    return {v.data: v.view for v in vertices.values()}, routes


def render_svg(
    graph: TaskGraph, *, visited: Collection[str] = (), current: str | None = None
) -> str:
    """The graph as an SVG element (no XML prolog), sized to its content."""
    boxes, routes = _layout(graph)
    xs = [b.xy[0] - b.w / 2 for b in boxes.values()] + [b.xy[0] + b.w / 2 for b in boxes.values()]
    ys = [b.xy[1] - b.h / 2 for b in boxes.values()] + [b.xy[1] + b.h / 2 for b in boxes.values()]
    dx, dy = MARGIN - min(xs), MARGIN - min(ys)
    width, height = max(xs) - min(xs) + 2 * MARGIN, max(ys) - min(ys) + 2 * MARGIN
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="diagram" width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" '
        'class="arrowhead"/></marker></defs>',
    ]
    parts += _groups(graph, boxes, dx, dy)
    for source, target, label, route in routes:
        parts.append(_edge(boxes[source], boxes[target], label, route, dx, dy))
    active = _ancestors(graph, current)
    for node in graph.nodes.values():
        box = boxes[node.id]
        x, y = box.xy[0] + dx - box.w / 2, box.xy[1] + dy - box.h / 2
        classes = ["node", f"kind-{node.kind}"]
        if node.id == current:
            classes.append("current")
        elif node.id in active:
            classes.append("active")
        elif node.id in visited:
            classes.append("visited")
        if node.id in (START, END):
            shape = (
                f'<rect x="{x:.1f}" y="{y + 6:.1f}" width="{box.w:.1f}" height="{box.h - 12:.1f}" '
                f'rx="{(box.h - 12) / 2:.1f}"/>'
                f'<text x="{box.xy[0] + dx:.1f}" y="{box.xy[1] + dy + 4:.1f}">'
                f"{escape(node.label)}</text>"
            )
        else:
            shape = (
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{box.w:.1f}" height="{box.h:.1f}" rx="6"/>'
                f'<text x="{box.xy[0] + dx:.1f}" y="{box.xy[1] + dy - 2:.1f}">'
                f"{escape(node.label)}</text>"
                f'<text class="kind" x="{box.xy[0] + dx:.1f}" y="{box.xy[1] + dy + 12:.1f}">'
                f"{escape(node.kind)}</text>"
            )
        parts.append(
            f'<g class="{" ".join(classes)}" data-task="{escape(node.id)}">'
            f"<title>{escape(node.id)}</title>{shape}</g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _ancestors(graph: TaskGraph, current: str | None) -> set[str]:
    """The composite tasks that hold the current step."""
    found: set[str] = set()
    node = graph.nodes.get(current or "")
    while node is not None and node.group is not None:
        found.add(node.group)
        node = graph.nodes.get(node.group)
    return found


def _groups(graph: TaskGraph, boxes: dict[str, _Box], dx: float, dy: float) -> list[str]:
    """A dashed frame around the body of each `for`, `try`, `do` and `fork`."""
    members: dict[str, list[str]] = {}
    for node in graph.nodes.values():
        group = node.group
        while group is not None:
            members.setdefault(group, []).append(node.id)
            parent = graph.nodes.get(group)
            group = parent.group if parent else None
    frames = []
    for group, ids in members.items():
        inner = [boxes[i] for i in ids]
        left = min(b.xy[0] - b.w / 2 for b in inner) - GROUP_PAD + dx
        top = min(b.xy[1] - b.h / 2 for b in inner) - GROUP_PAD + dy
        right = max(b.xy[0] + b.w / 2 for b in inner) + GROUP_PAD + dx
        bottom = max(b.xy[1] + b.h / 2 for b in inner) + GROUP_PAD + dy
        label = graph.nodes[group].label
        frames.append(
            f'<g class="group" data-group="{escape(group)}"><rect x="{left:.1f}" y="{top:.1f}" '
            f'width="{right - left:.1f}" height="{bottom - top:.1f}" rx="10"/>'
            f'<text x="{left + 8:.1f}" y="{top + 12:.1f}">{escape(label)}</text></g>'
        )
    return frames


def _edge(source: _Box, target: _Box, label: str, route: _Route, dx: float, dy: float) -> str:
    points = route.points or [source.xy, target.xy]
    (sx, sy), (tx, ty) = points[0], points[-1]
    # Leave the source at its border and arrive at the target's, not at their centres.
    start = (sx, sy + source.h / 2) if ty >= sy else (sx, sy - source.h / 2)
    end = (tx, ty - target.h / 2) if ty >= sy else (tx, ty + target.h / 2)
    path = [start, *points[1:-1], end]
    d = "M" + " L".join(f"{x + dx:.1f},{y + dy:.1f}" for x, y in path)
    text = ""
    if label:
        mx, my = path[len(path) // 2 - 1] if len(path) > 2 else path[0]
        lx, ly = (mx + path[-1][0]) / 2 + dx, (my + path[-1][1]) / 2 + dy
        text = f'<text class="edge-label" x="{lx + 4:.1f}" y="{ly:.1f}">{escape(label)}</text>'
    return f'<g class="edge"><path d="{d}" marker-end="url(#arrow)"/>{text}</g>'
