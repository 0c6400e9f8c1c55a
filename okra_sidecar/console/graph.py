"""A workflow definition as a graph of its tasks: nodes by JSON pointer, edges by flow.

The pointers are the ones `current_step` and the history's task events carry, so a page can
mark where an instance is and where it has been. Composite tasks (`do`, `for`, `try`, `fork`)
are nodes of their own whose children follow them; `group` names the composite a node sits
in, so a drawing can box a loop's or a try's body.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from okra_sidecar.engine.definitions.compiler import TASK_TYPES
from okra_sidecar.engine.definitions.pointers import pointer_join

__all__ = ["END", "START", "Edge", "Node", "TaskGraph", "task_graph"]

START = "start"
END = "end"
# `do` last: a `for` task has a `do` of its own.
TASK_KINDS = (*(kind for kind in TASK_TYPES if kind != "do"), "do")


@dataclass(frozen=True)
class Node:
    id: str  # the task's JSON pointer, or START, END, or a fork's join
    label: str
    kind: str
    group: str | None = None  # the composite task this node belongs to


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    label: str = ""


@dataclass
class TaskGraph:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)

    def add(self, node: Node) -> str:
        self.nodes[node.id] = node
        return node.id

    def link(self, source: str, target: str, label: str = "") -> None:
        edge = Edge(source, target, label)
        if edge not in self.edges:
            self.edges.append(edge)


def kind_of_task(body: Mapping[str, Any]) -> str:
    return next((kind for kind in TASK_KINDS if kind in body), "task")


def task_graph(document: Mapping[str, Any]) -> TaskGraph:
    """The graph of a definition's top-level `do`, from START to END."""
    graph = TaskGraph()
    graph.add(Node(START, "start", "start"))
    graph.add(Node(END, "end", "end"))
    tasks = document.get("do")
    entry = _task_list(graph, tasks if isinstance(tasks, list) else [], "/do", END, None)
    graph.link(START, entry)
    return graph


def _entries(tasks: Sequence[Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(name, body) of each well-formed `- name: {...}` item; anything else is skipped."""
    found = []
    for item in tasks:
        if isinstance(item, Mapping) and len(item) == 1:
            name, body = next(iter(item.items()))
            if isinstance(name, str) and isinstance(body, Mapping):
                found.append((name, body))
    return found


def _task_list(
    graph: TaskGraph, tasks: Sequence[Any], path: str, exit_to: str, group: str | None
) -> str:
    """Add the tasks of one list; returns the node that starts it (`exit_to` when empty)."""
    entries = _entries(tasks)
    pointers = [pointer_join(path, index, name) for index, (name, _) in enumerate(entries)]
    by_name = {name: pointers[index] for index, (name, _) in enumerate(entries)}
    for index, (name, body) in enumerate(entries):
        following = pointers[index + 1] if index + 1 < len(pointers) else exit_to
        then = body.get("then")
        if then in (None, "continue"):
            successor = following
        elif then == "exit":
            successor = exit_to
        elif then == "end":
            successor = END
        else:
            successor = by_name.get(str(then), following)
        _task(graph, name, body, pointers[index], successor, following, by_name, exit_to, group)
    return pointers[0] if pointers else exit_to


def _task(
    graph: TaskGraph,
    name: str,
    body: Mapping[str, Any],
    node: str,
    successor: str,
    following: str,
    siblings: Mapping[str, str],
    exit_to: str,
    group: str | None,
) -> None:
    kind = kind_of_task(body)
    graph.add(Node(node, name, kind, group))
    if kind == "do" and isinstance(body["do"], list):
        graph.link(node, _task_list(graph, body["do"], pointer_join(node, "do"), successor, node))
    elif kind == "for" and isinstance(body.get("do"), list):
        first = _task_list(graph, body["do"], pointer_join(node, "do"), node, node)
        graph.link(node, first, "each")
        graph.link(node, successor, "done")
    elif kind == "try" and isinstance(body["try"], list):
        graph.link(node, _task_list(graph, body["try"], pointer_join(node, "try"), successor, node))
        catch = body.get("catch")
        if isinstance(catch, Mapping) and isinstance(catch.get("do"), list):
            path = pointer_join(node, "catch", "do")
            graph.link(node, _task_list(graph, catch["do"], path, successor, node), "catch")
    elif kind == "fork" and isinstance(body["fork"], Mapping):
        join = graph.add(Node(pointer_join(node, "fork", "join"), "join", "join", group))
        branches = body["fork"].get("branches")
        path = pointer_join(node, "fork", "branches")
        for index, (branch, branch_body) in enumerate(_entries(branches or [])):
            branch_node = pointer_join(path, index, branch)
            _task(graph, branch, branch_body, branch_node, join, join, {}, join, node)
            graph.link(node, branch_node)
        graph.link(join, successor)
    elif kind == "switch" and isinstance(body["switch"], list):
        _switch(graph, node, body["switch"], following, siblings, exit_to)
    else:
        graph.link(node, successor)


def _switch(
    graph: TaskGraph,
    node: str,
    cases: Sequence[Any],
    following: str,
    siblings: Mapping[str, str],
    exit_to: str,
) -> None:
    has_default = False
    for case_name, case in _entries(cases):
        then = case.get("then")
        target = {None: following, "continue": following, "exit": exit_to, "end": END}.get(
            then, siblings.get(str(then), following)
        )
        has_default = has_default or "when" not in case
        graph.link(node, target, case_name)
    if not has_default:
        graph.link(node, following, "no match")
