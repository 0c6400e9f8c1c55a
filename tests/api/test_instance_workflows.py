"""InstanceWorkflows keeps the newest instances' workflows, within its capacity."""

from __future__ import annotations

import pytest

from okra_sidecar.api.instance_workflows import InstanceWorkflows


def test_it_remembers_and_forgets() -> None:
    workflows = InstanceWorkflows(capacity=4)
    workflows.remember("i-1", "shop.order.1.0.0")
    assert workflows.get("i-1") == "shop.order.1.0.0"
    assert workflows.get("i-2") is None
    workflows.forget("i-1")
    workflows.forget("i-1")  # forgetting an unknown id is harmless
    assert workflows.get("i-1") is None


def test_the_oldest_entry_leaves_first_when_full() -> None:
    workflows = InstanceWorkflows(capacity=3)
    for n in range(5):
        workflows.remember(f"i-{n}", f"w-{n}")
    assert len(workflows) == 3
    assert [workflows.get(f"i-{n}") for n in range(5)] == [None, None, "w-2", "w-3", "w-4"]
    # Remembering a known id again does not push anything out.
    workflows.remember("i-3", "w-3b")
    assert len(workflows) == 3 and workflows.get("i-2") == "w-2"


def test_a_capacity_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        InstanceWorkflows(capacity=0)
