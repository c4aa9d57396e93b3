"""Errors a user can cause: the CLI prints the message on one line and exits 2."""


class UsageError(Exception):
    """Bad input, bad manifest, unknown version, a second deployment: exit code 2, no traceback."""


class OperationFailed(Exception):
    """The operation ran and failed (rolled back, verify failed): exit code 1."""
