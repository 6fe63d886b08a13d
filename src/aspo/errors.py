"""The project's exception types.

``UserError``: a mistake a user can fix (bad path, bad key, bad value, malformed data). The command line
prints its message as one paragraph and exits with status 2 -- never a traceback. Library callers get an
ordinary ``ValueError`` subclass.

``NonFiniteError``: the policy's numbers went NaN/inf; a trainer signal, not a user mistake.
"""


class UserError(ValueError):
    """Raised for bad input; the message must name what is wrong (key, path, file:line)."""


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (truncated, corrupt, missing); the message names the file."""


class Interrupted(BaseException):
    """The run was stopped by a signal; ``exit_code`` is the shell's 128 + signal number.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way up swallows it.
    """

    def __init__(self, signum: int, message: str, *, quiet: bool = False) -> None:
        super().__init__(message)
        self.signum, self.exit_code, self.quiet = signum, 128 + signum, quiet


class SandboxUnavailable(UserError):
    """No isolating sandbox for model-written code here, and the unisolated mode was not asked for."""


class RewardInfraError(UserError):
    """Most reward checks of a batch could not run (sandbox or host failure): results would be noise."""


class NonFiniteError(FloatingPointError):
    """The policy's numbers went NaN/inf (diverged weights); the trainer counts the step as non-finite."""
