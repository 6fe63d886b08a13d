"""One exception type for mistakes a user can fix (bad path, bad key, bad value, malformed data).

The command line prints its message as one paragraph and exits with status 2 -- never a traceback.
Library callers get an ordinary ``ValueError`` subclass.
"""


class UserError(ValueError):
    """Raised for bad input; the message must name what is wrong (key, path, file:line)."""
