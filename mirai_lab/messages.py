"""One way to tell the user something on stderr: the line as written, never re-wrapped or styled.

rich wraps long lines at the terminal width and, with markup on, reads `[...]` as a style tag.
A path split mid-name, or one whose brackets vanished, cannot be pasted back into a shell, so
every message line goes through `say`, which turns both off. Tables and live progress use rich
for what it is good at and do not come here.
"""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True)


def say(line: str) -> None:
    """Print one message line to stderr exactly as given."""
    console.print(line, highlight=False, markup=False, soft_wrap=True)
