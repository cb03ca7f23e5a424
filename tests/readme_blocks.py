"""The README's runnable cluster commands: fenced ``bash`` blocks marked ``<!-- readme-cluster: NAME -->``,
and the loopback values a test runs them with (so the README and its test cannot drift apart)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"<!-- readme-cluster: ([\w-]+) -->\n```bash\n(.*?)```", re.S)


def readme_blocks(path: Path = README) -> dict[str, str]:
    """``{name: block text}`` of every marked block."""
    found = _BLOCK.findall(path.read_text())
    names = [name for name, _ in found]
    assert len(set(names)) == len(names), f"duplicate readme-cluster markers: {names}"
    return dict(found)


def commands(block: str) -> list[str]:
    """The block's commands, backslash continuations joined, comment-only and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def job_entrypoint(command: str) -> list[str] | None:
    """The ``python -m tomeray.jobs.X ...`` part of a ``ray job submit ... -- ENTRYPOINT`` command."""
    words = shlex.split(command, comments=True)
    if words[:3] != ["ray", "job", "submit"] or "--" not in words:
        return None
    return words[words.index("--") + 1:]
