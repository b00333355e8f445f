"""Errors that reach the user as one clear message (the CLI prints them without a traceback)."""


class ResnetlabError(Exception):
    """A failure the user can act on; the message says what went wrong and what to do."""


class ConfigError(ResnetlabError):
    """Invalid configuration: the message names the key, the value and what is allowed."""
