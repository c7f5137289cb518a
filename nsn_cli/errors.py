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


#: Where a :class:`ParameterError`'s message names its parameter.
NAME = "{name}"


def flag_of(param: str) -> str:
    """The CLI flag of a Python parameter: ``max_filters`` -> ``--max-filters``."""
    return "--" + param.replace("_", "-")


class ParameterError(NsnError):
    """A bad value of one option: one message, two names for the option. ``str()`` names it as
    the CLI flag (``--max-filters``), :meth:`python_message` as the Python parameter
    (``max_filters``); the library raises the latter as a ``ValueError``.

    ``template`` holds :data:`NAME` where the option is named (a message without it starts with
    the name), and ``{other}`` for each parameter in ``others`` it also names (a name, or a
    (name, flag) pair). ``flag``: the option's flag when it is not :func:`flag_of` the
    parameter (``-n``)."""

    def __init__(self, param: str, template: str, flag: str | None = None,
                 others: tuple[str | tuple[str, str], ...] = ()):
        self.param = param
        self.template = template if NAME in template else f"{NAME} {template}"
        pairs = [(o, flag_of(o)) if isinstance(o, str) else o for o in others]
        self.names = {NAME: (param, flag or flag_of(param)), **{f"{{{o}}}": (o, f) for o, f in pairs}}
        super().__init__(self._render(cli=True))

    def _render(self, cli: bool) -> str:
        text = self.template
        for key, (python, flag) in self.names.items():
            text = text.replace(key, flag if cli else python)
        return text

    def python_message(self) -> str:
        return self._render(cli=False)
