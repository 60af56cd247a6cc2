"""User-facing errors.

A user's mistake (bad config key, missing file, corrupt image, unknown framework) must end with one
clear line and a non-zero exit, never a traceback. Code raises `UserError`; `harness.cli.main` turns
it into `lorabench: error: <message>` and exit status 2.
"""


class UserError(Exception):
    """A problem the user can fix: the message names it in one line."""

    exit_code = 2
