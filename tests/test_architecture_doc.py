"""docs/architecture.md names every Redis key, consumer group, Lua script and package."""

from __future__ import annotations

import re
from pathlib import Path

from okra_sidecar.store import keys as keys_module
from okra_sidecar.store.keys import RedisKeys

REPO_ROOT = Path(__file__).resolve().parent.parent
DOC = REPO_ROOT / "docs" / "architecture.md"
PACKAGE = REPO_ROOT / "okra_sidecar"
# RedisKeys members that compute or list keys rather than name one kind of key.
KEY_HELPERS = frozenset(
    {
        "partition",
        "partitions",
        "prefix",
        "all_work",
        "all_slow_work",
        "lane",
        "all_timers",
        "all_effects",
        "all_outboxes",
        "all_tasks",
        "status_indexes",
        "commit_keys",
        "instance_in",
        "instance_keys",
        "delivery_keys",
        "tag",
        "scope",
        "limit_tag",
    }
)


def layout_members(text: str) -> set[str]:
    """The `RedisKeys` column of the Redis layout table."""
    section = text.split("## Redis layout", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.split("\n") if line.startswith("| `")]
    return {re.findall(r"`([^`]+)`", row.split("|")[2])[0] for row in rows}


def test_every_redis_key_is_in_the_layout() -> None:
    members = {name for name in vars(RedisKeys) if not name.startswith("_")} - KEY_HELPERS
    assert layout_members(DOC.read_text()) == members


def test_every_consumer_group_is_named() -> None:
    text = DOC.read_text()
    groups = {v for k, v in vars(keys_module).items() if k.endswith("_GROUP")}
    assert groups, "keys.py names the consumer groups"
    assert not [g for g in groups if f"`{g}`" not in text]


def test_every_lua_script_is_described() -> None:
    text = DOC.read_text()
    scripts = sorted(p.name for p in (PACKAGE / "store" / "scripts").glob("*.lua"))
    assert not [s for s in scripts if f"`{s}`" not in text]


def test_every_package_is_named() -> None:
    text = DOC.read_text()
    packages = sorted(
        p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()
    )
    assert not [p for p in packages if f"`{p}/`" not in text]


def named_paths(text: str) -> set[str]:
    """Every file the document names in backticks (`api/chain.py`, `runner.py`, `x.lua`),
    and every module of the tree drawing."""
    names = set(re.findall(r"`([\w./-]+\.(?:py|lua|proto|md|yaml|toml))`", text))
    tree = text.split("## The tree", 1)[1].split("\n## ", 1)[0]
    names |= set(re.findall(r"\b([\w/]+\.py)\b", tree))
    return {name for name in names if not name.startswith(("http", "."))}


# Where the document's files live (the virtualenv and caches are not looked in).
SOURCE_DIRS = ("okra_sidecar", "tests", "bench", "clients", "protos", "deploy", "docs")


def exists(name: str) -> bool:
    """A path from the repository root or the package, or a bare file name found in them."""
    if "/" in name:
        return (REPO_ROOT / name).exists() or (PACKAGE / name).exists()
    if (REPO_ROOT / name).exists():
        return True
    return any(next((REPO_ROOT / d).rglob(name), None) for d in SOURCE_DIRS)


def test_every_named_file_exists() -> None:
    text = DOC.read_text()
    assert named_paths(text), "the document names modules"
    assert not sorted(name for name in named_paths(text) if not exists(name))
