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


def one_line(text: str) -> str:
    """`text` as one line: its lines joined by a space, blank ones and surrounding whitespace dropped.

    Library errors wrapped into a message (torch's, a database driver's) often start with or hold
    line breaks; an error line must stay one line, the first thing on it "error:"."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def show_progress(quiet: bool = False) -> bool:
    """Whether a transient rich progress display may run on stderr: only on a terminal.

    Elsewhere (a log file, a pipe, captured stderr) rich draws nothing while it runs and writes
    an empty line when it stops, so an error raised inside it came out after a blank line."""
    return not quiet and console.is_terminal


def warn(message: str) -> None:
    """Report a fault the toolkit recovers from (a corrupt cache rebuilt, a run restarted): one line on stderr,
    so that `--json` output on stdout stays parseable."""
    say(f"warning: {one_line(message)}")
