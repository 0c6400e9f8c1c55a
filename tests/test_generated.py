"""The committed stubs in clients/python/okra_client/gen match what protos/generate.py makes now."""

from __future__ import annotations

from pathlib import Path

from protos.generate import GEN_ROOT, generate


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_generated_stubs_are_current(tmp_path: Path) -> None:
    generate(tmp_path / "gen")
    fresh, committed = read_tree(tmp_path / "gen"), read_tree(GEN_ROOT)
    stale = sorted(
        name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name)
    )
    assert not stale, (
        f"clients/python/okra_client/gen is stale in {stale}: run `make proto` and commit"
    )
