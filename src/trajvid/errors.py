"""The errors the stages raise on purpose: each is reported as one line `error: ...` and an exit
code (`cli.py`), never a traceback. A traceback means a bug."""

from __future__ import annotations


class TrajvidError(Exception):
    """An expected failure whose message names what is wrong and what to do about it."""

    exit_code = 2


class ParamsError(TrajvidError, ValueError):
    """A bad parameter: the message names the key, the value and what is allowed (params.yaml, a
    backbone's block, a model's config.json)."""


def first_line(error: BaseException) -> str:
    """An exception's message cut to one line for an `error: ...` message (its type if empty)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class Interrupted(BaseException):
    """SIGTERM arrived (SIGINT arrives as KeyboardInterrupt). A BaseException, like
    KeyboardInterrupt, so that no `except Exception` swallows it and cleanup still runs."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name
