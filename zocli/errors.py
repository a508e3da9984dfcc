"""The errors a user can act on. Each carries its exit code; the CLI prints its message as one line.

1: the run could not be done (missing data, a damaged file, a failed download); 2: the command line, or a
file it names, is wrong. Anything that is not a ZocliError is a bug, reported with its traceback.
"""


class ZocliError(Exception):
    """An error the user can act on: one line, and `exit_code`."""

    exit_code = 1


class UsageError(ZocliError):
    """The command line, or a file it names, is wrong."""

    exit_code = 2
