"""User-facing errors: one clear message, no stack trace."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """A problem the user can fix (bad override, missing file, impossible config).

    The message must name the setting and say how to fix it. Entry points print it alone
    and exit with status 2; it is never shown with a traceback.
    """


def exits_cleanly_on_user_error(fn):
    """Decorator for entry points: a UserError becomes one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper
