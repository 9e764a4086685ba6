"""The one exception type a user's mistake turns into."""


class TusouError(Exception):
    """A problem the user can fix; its message is one line that says how.

    The CLI prints it as `tusou: error: <message>` and exits non-zero, with no traceback.
    """
