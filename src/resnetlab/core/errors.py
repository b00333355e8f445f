"""Errors that reach the user as one clear message (the CLI prints them without a traceback)."""


class ResnetlabError(Exception):
    """A failure the user can act on; the message says what went wrong and what to do."""


class ConfigError(ResnetlabError):
    """Invalid configuration: the message names the key, the value and what is allowed."""


def invalid(key: str, value: object, expected: str) -> ConfigError:
    """The error for an invalid value, in the one shape every validation message has::

        <key>: <value> is not allowed; expected <what is allowed>

    ``key`` is the dotted path of the setting (``train.lr``, or ``<model>.<argument>`` such as
    ``resnet_v1.depth`` for a model argument). Raise the result.
    """
    return ConfigError(f"{key}: {value!r} is not allowed; expected {expected}")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of `exc`'s message (its type's name when it has none), cut to `limit`
    characters: how a library's paragraph-long error becomes one line of ours."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
