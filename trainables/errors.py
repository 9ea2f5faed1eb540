"""Errors that are the user's to fix: the CLI prints them as one line and exits 2."""


class UserError(Exception):
    """A problem in the input (spec, data files, results folder), stated in one line."""


class ConfigError(UserError):
    """A bad value in a trial config. `key` is the config key at fault, so the spec
    loader can say where in the spec file it came from (e.g. `grid.lr[2]`)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
