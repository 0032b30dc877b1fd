"""The error types the CLI turns into one ``error: ...`` line (leaf module: imports nothing of ours).

A ``DiffauditError`` carries one sentence that names the offending input and the fix; the CLI exits
with status 2. A ``ModelError`` says the audited model's own code failed (it raised, called
``sys.exit``, or returned unusable output); the CLI exits with status 3. Anything else escaping is a
bug of ours.
"""


class DiffauditError(Exception):
    """A user mistake: bad path, bad values, bad shape, bad spec. The message is shown verbatim."""

    exit_code = 2


class ModelError(Exception):
    """The audited model's own code failed: it raised, exited, or returned ragged, complex or NaN output.

    Deliberately NOT a ``DiffauditError``: optional stages skip a ``DiffauditError`` and keep going, but a
    model that fails must stop the audit (a report built around a failed call would be a false pass).
    The original exception, if any, is the ``__cause__`` (the CLI prints its traceback only with
    ``DIFFAUDIT_DEBUG=1``).
    """

    exit_code = 3
