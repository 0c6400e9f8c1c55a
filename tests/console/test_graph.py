"""A definition's task graph and its drawing: nodes by pointer, edges by flow."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from okra_sidecar.console.diagram import render_svg
from okra_sidecar.console.graph import END, START, task_graph

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "workflows"

NESTED: dict[str, Any] = {
    "do": [
        {
            "check": {
                "switch": [{"big": {"when": ".n > 9", "then": "loop"}}, {"small": {"then": "end"}}]
            }
        },
        {"skipped": {"set": {"a": 1}}},
        {
            "loop": {
                "for": {"each": "item", "in": ".items"},
                "do": [
                    {"visit": {"set": {"v": "${ $item }"}}},
                    {"pause": {"wait": {"seconds": 1}}},
                ],
            }
        },
        {
            "guarded": {
                "try": [{"call1": {"call": "http", "with": {"method": "get", "endpoint": "x"}}}],
                "catch": {"errors": {}, "do": [{"recover": {"set": {"r": True}}}]},
            }
        },
        {
            "both": {
                "fork": {
                    "branches": [
                        {"left": {"set": {"l": 1}}},
                        {"right": {"do": [{"inner": {"set": {"i": 1}}}]}},
                    ]
                }
            }
        },
        {"back": {"set": {"b": 1}, "then": "check"}},
    ]
}


def edges(document: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(e.source, e.target, e.label) for e in task_graph(document).edges}


def test_sequence_switch_and_jumps() -> None:
    found = edges(NESTED)
    assert (START, "/do/0/check", "") in found
    assert ("/do/0/check", "/do/2/loop", "big") in found
    assert ("/do/0/check", END, "small") in found
    # A switch with a default case has no "no match" way out.
    assert not [e for e in found if e[0] == "/do/0/check" and e[2] == "no match"]
    assert ("/do/1/skipped", "/do/2/loop", "") in found
    assert ("/do/5/back", "/do/0/check", "") in found


def test_composites_hold_their_children() -> None:
    graph = task_graph(NESTED)
    found = edges(NESTED)
    assert ("/do/2/loop", "/do/2/loop/do/0/visit", "each") in found
    assert ("/do/2/loop/do/1/pause", "/do/2/loop", "") in found
    assert ("/do/2/loop", "/do/3/guarded", "done") in found
    assert graph.nodes["/do/2/loop/do/0/visit"].group == "/do/2/loop"
    assert ("/do/3/guarded", "/do/3/guarded/try/0/call1", "") in found
    assert ("/do/3/guarded", "/do/3/guarded/catch/do/0/recover", "catch") in found
    assert ("/do/3/guarded/try/0/call1", "/do/4/both", "") in found
    join = "/do/4/both/fork/join"
    assert ("/do/4/both", "/do/4/both/fork/branches/0/left", "") in found
    assert ("/do/4/both/fork/branches/1/right/do/0/inner", join, "") in found
    assert (join, "/do/5/back", "") in found
    assert graph.nodes["/do/4/both/fork/branches/1/right/do/0/inner"].group == (
        "/do/4/both/fork/branches/1/right"
    )


def test_a_switch_without_default_can_fall_through() -> None:
    document = {
        "do": [
            {"pick": {"switch": [{"a": {"when": ".a", "then": "second"}}]}},
            {"first": {"set": {}}},
            {"second": {"set": {}}},
        ]
    }
    assert ("/do/0/pick", "/do/1/first", "no match") in edges(document)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_draws_every_task(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    graph = task_graph(document)
    svg = render_svg(graph, visited={"/do/0/" + next(iter(document["do"][0]))})
    drawn = set(re.findall(r'data-task="([^"]+)"', svg))
    assert drawn == set(graph.nodes)
    assert svg.count('class="edge"') == len(graph.edges)
    assert svg.startswith("<svg") and svg.endswith("</svg>")


def test_the_current_step_and_its_loop_are_marked() -> None:
    svg = render_svg(
        task_graph(NESTED),
        visited={"/do/0/check", "/do/2/loop/do/0/visit"},
        current="/do/2/loop/do/1/pause",
    )
    assert re.search(r'class="node kind-wait current" data-task="/do/2/loop/do/1/pause"', svg)
    assert re.search(r'class="node kind-for active" data-task="/do/2/loop"', svg)
    assert re.search(r'class="node kind-switch visited" data-task="/do/0/check"', svg)
    assert re.search(r'class="node kind-set" data-task="/do/1/skipped"', svg)
    assert 'data-group="/do/2/loop"' in svg


def test_names_are_escaped() -> None:
    svg = render_svg(task_graph({"do": [{"<b>&": {"set": {}}}]}))
    assert "&lt;b&gt;&amp;" in svg and "<b>&" not in svg
