"""The one exception family of tomeray.

Every error a user can cause (bad config, bad input, missing weights) derives from
``TomerayError`` so that entry points can print a one-line message instead of a traceback.
Input and config errors are also ``ValueError`` so callers that expect the builtin still work.
"""

import os

__all__ = ["ConfigError", "InputError", "TomerayError", "WeightsError", "link_note", "one_line"]


class TomerayError(Exception):
    """Base class of every error tomeray raises on purpose."""


class ConfigError(TomerayError, ValueError):
    """A configuration key, value or type is wrong."""


class InputError(TomerayError, ValueError):
    """An input (tensor, file, path) does not fit what the code needs."""


class WeightsError(TomerayError):
    """Model weights could not be found, downloaded or loaded."""


def one_line(error: BaseException, limit: int = 500) -> str:
    """An error as one line of at most ``limit`` characters, for error tables and messages (native
    libraries such as decord append C++ stack traces to their messages: only the human part is kept)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text.split(" Stack trace")[0][:limit]


def link_note(path) -> str:
    """For an error about ``path`` as the user's tree shows it: where it really leads when a symbolic
    link is on the way (" ('in/a.avi' resolves to '/data/a.avi', which does not exist)"), else ""."""
    shown = os.path.abspath(os.fspath(path))
    target = os.path.realpath(shown)
    if target == shown:
        return ""
    gone = "" if os.path.exists(target) else ", which does not exist"
    return f" ('{os.fspath(path)}' resolves to '{target}'{gone})"
