"""Errors a user can act on: each message names what was wrong and how to fix it."""


class ConfigError(ValueError):
    """A configuration value is missing, malformed or inconsistent with another one."""


class InputError(ValueError):
    """An input (dataset, model folder, endpoint, credential) cannot be used as given."""


class StageStopped(RuntimeError):
    """The stage stopped before doing all it should (a signal, too few answers): what it did is saved,
    and running it again (a retry of the task) resumes."""
