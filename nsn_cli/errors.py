"""The project's own error type.

Every problem a user can fix (a missing file, a bad option, a corrupt data set) is raised as
:class:`NsnError`; the CLI's error boundary turns it into one red line on stderr and exit
code 2. Anything else is a bug and keeps its traceback.
"""


class NsnError(Exception):
    """A user-facing error: the message names the problem and, where possible, the fix."""
