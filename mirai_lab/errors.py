"""One exception type for every mistake a user can make.

The CLI turns it into a single line on stderr and exit code 2; everything else is a bug
and keeps its traceback so it can be reported.
"""


class UserError(Exception):
    """Bad config, bad input file, impossible value: say which and what was expected."""


class CorruptFile(ValueError):
    """A cache or checkpoint that exists but cannot be read; callers rebuild or fall back."""
