"""The one exception type for problems a user can fix (bad input, missing package, bad config).

The CLI prints its message as a single `error: ...` line and exits with status 2; library
callers can catch it to tell user errors from bugs.
"""


class FlaxDistilError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""
