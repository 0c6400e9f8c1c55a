"""Drop the editable requirements (and their comments) from a lock pip-compile wrote.

pip refuses an editable requirement in hash-checking mode, so `make install` installs the
repository's own distributions itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

# pip-compile's warning above an editable requirement, which has no hash.
WARNING_LINES = ("# WARNING: pip install will require", "# Consider using a hashable URL")


def drop_editable(text: str) -> str:
    kept: list[str] = []
    dropping = False
    for line in text.splitlines(keepends=True):
        if line.startswith(WARNING_LINES):
            continue
        if line.startswith("-e "):
            dropping = True
            continue
        # A requirement's `# via` lines are indented under it.
        if dropping and line.startswith("    "):
            continue
        dropping = False
        kept.append(line)
    return "".join(kept)


def main() -> None:
    lock = Path(sys.argv[1])
    lock.write_text(drop_editable(lock.read_text()))


if __name__ == "__main__":
    main()
