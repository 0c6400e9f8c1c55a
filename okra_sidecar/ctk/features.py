"""Just enough Gherkin for the CTK: scenarios, their steps and `\"\"\"` doc strings."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Scenario", "Step", "parse_feature"]


@dataclass
class Step:
    text: str
    doc: str | None = None


@dataclass
class Scenario:
    feature: str
    name: str
    steps: list[Step] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.feature}: {self.name}"


def parse_feature(path: Path) -> list[Scenario]:
    scenarios: list[Scenario] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        if line.startswith("Scenario:"):
            scenarios.append(Scenario(path.stem, line.removeprefix("Scenario:").strip()))
        elif scenarios and re.match(r"(Given|And|When|Then|But)\b", line):
            scenarios[-1].steps.append(Step(line.split(" ", 1)[1]))
        elif line.startswith('"""') and scenarios and scenarios[-1].steps:
            body: list[str] = []
            while index < len(lines) and not lines[index].strip().startswith('"""'):
                body.append(lines[index])
                index += 1
            index += 1
            scenarios[-1].steps[-1].doc = textwrap.dedent("\n".join(body))
    return scenarios
