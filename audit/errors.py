"""The one error type for user mistakes (leaf module: imports nothing of ours).

A ``DiffauditError`` carries one sentence that names the offending input and the fix. The CLI prints
it as ``error: <message>`` and exits with status 2; anything else escaping is a bug of ours.
"""


class DiffauditError(Exception):
    """A user mistake: bad path, bad values, bad shape, bad spec. The message is shown verbatim."""

    exit_code = 2
