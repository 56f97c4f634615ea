"""Errors that reach the user as one clear line."""


class LabkitError(Exception):
    """A failure the user can act on. The CLI prints it as one line, exit 1."""

    exit_code = 1


class UsageError(LabkitError, ValueError):
    """Bad input (parameters, files, privileges). Raised before the kernel is touched; exit 2."""

    exit_code = 2


class Unavailable(LabkitError):
    """A mode cannot run here: names the missing tool, privilege or kernel feature."""

    exit_code = 3
