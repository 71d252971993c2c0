"""The one exception type for mistakes a user can fix (bad files, bad config, missing weights).

The CLI prints its message without a traceback and exits with status 2; anything else is a bug.
"""


class UserError(Exception):
    """A problem with the user's input, described well enough to fix it."""
