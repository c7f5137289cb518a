"""The project's own error types.

Every problem a user can fix (a missing file, a bad option, a corrupt data set, a full disk)
is raised as :class:`NsnError`; the CLI's error boundary turns it into one red line on stderr
and exit code 2. :class:`Interrupted` is Ctrl-C with what the job kept, for exit code 130.
Anything else is a bug and keeps its traceback.
"""

import errno

#: What a failed write means, by errno: every one is the user's to fix (one line, exit 2).
WRITE_FAILURES = {
    errno.ENOSPC: "no space left on the disk",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file would pass the size limit set for this process (ulimit -f)",
    errno.EACCES: "permission denied (a read-only folder?)",
    errno.EPERM: "operation not permitted (a read-only or immutable folder?)",
    errno.EROFS: "the file system is read-only",
}


def write_reason(exc: OSError) -> str:
    """Why a write failed, in words."""
    return WRITE_FAILURES.get(exc.errno) or exc.strerror or str(exc)


class NsnError(Exception):
    """A user-facing error: the message names the problem and, where possible, the fix."""


class WriteError(NsnError):
    """A failed write of an output (full disk, read-only folder): ``path`` and ``reason``."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: cannot write: {reason}; no file was changed")
        self.path = path
        self.reason = reason


class Interrupted(Exception):
    """Ctrl-C, caught by a job that says what it kept (e.g. a model's completed layers).

    Not an :class:`NsnError`, so ``except NsnError`` clean-up code never swallows it."""
