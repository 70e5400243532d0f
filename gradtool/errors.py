"""The failures gradtool expects: each a kind, the fields it is about, one line and a hint.

An error carries structured fields (`loss`, `parameter`, `option`, `reason`) and a message worded
once, with the options it mentions marked by `opt(...)`. A Python caller reads the message with
options named as keyword arguments (`strategy='loop'`); the CLI words the same error with its
flags (`--strategy loop`) through `GradtoolError.worded`. Anything that is not a `GradtoolError`
is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

# An option reference inside a message: \x1fopt:NAME\x1f or \x1fopt:NAME=VALUE\x1f.
_OPTION = re.compile(r"\x1fopt:(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:=(?P<value>[^\x1f]*))?\x1f")
_NO_VALUE = object()

OptionValue = str | tuple[str, ...] | None
OptionWording = Callable[[str, OptionValue], str]
_LIST = "\x1e"  # marks (and separates) the items of a value that is a sequence


def opt(name: str, value: object = _NO_VALUE) -> str:
    """Return a reference to option `name` (optionally with `value`) for an error message.

    `name` is the Python keyword (`strategy`, `normalize`, `params`); each caller words it its way.
    A tuple or list `value` stays a sequence: `methods=('mgda', 'upgrad')` for Python callers,
    `--method mgda,upgrad` on the command line.
    """
    if value is _NO_VALUE:
        return f"\x1fopt:{name}\x1f"
    if isinstance(value, (tuple, list)):
        value = "".join(_LIST + str(v) for v in value)
    return f"\x1fopt:{name}={value}\x1f"


def python_option(name: str, value: OptionValue) -> str:
    """Word an option reference for Python callers: `strategy='loop'`, `preference=(1, 1, 2)`,
    or `strategy` alone."""
    if value is None:
        return name
    if isinstance(value, tuple):
        items = ", ".join(v if _is_number(v) else repr(v) for v in value)
        return f"{name}=({items}{',' if len(value) == 1 else ''})"
    return f"{name}={value!r}" if not _is_number(value) else f"{name}={value}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def word(text: str, wording: OptionWording = python_option) -> str:
    """Return `text` with its option references worded by `wording(name, value)`."""

    def one(match: re.Match[str]) -> str:
        value: OptionValue = match["value"]
        if value is not None and value.startswith(_LIST):
            value = tuple(value[1:].split(_LIST))
        return wording(match["name"], value)

    return _OPTION.sub(one, text)


class GradtoolError(Exception):
    """An expected failure: a message, an optional hint, the fields it is about, an exit code.

    `loss`, `parameter`, `option` (the Python keyword) and `reason` (a short machine-readable
    cause) let callers act on the error without reading its text.
    """

    exit_code: int = 1

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        loss: str | None = None,
        parameter: str | None = None,
        option: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.template = message
        self.hint_template = hint
        self.loss = loss
        self.parameter = parameter
        self.option = option
        self.reason = reason
        super().__init__(word(message))

    @property
    def message(self) -> str:
        """Return the message, options worded for Python callers."""
        return word(self.template)

    @property
    def hint(self) -> str | None:
        """Return the hint, options worded for Python callers (None without one)."""
        return None if self.hint_template is None else word(self.hint_template)

    def worded(self, wording: OptionWording) -> tuple[str, str | None]:
        """Return (message, hint) with the options worded by `wording` (e.g. as CLI flags)."""
        hint = None if self.hint_template is None else word(self.hint_template, wording)
        return word(self.template, wording), hint


class GradfileError(GradtoolError):
    """The gradfile is missing, unreadable, or does not follow the gradfile contract (exit 1)."""


class LossError(GradtoolError):
    """A loss returned by `losses` is unusable: not scalar, detached, non-finite, ... (exit 1)."""


class GradientError(GradtoolError):
    """The gradients themselves are unusable, e.g. they hold NaN or infinity (exit 1)."""


class NonFiniteGradientError(GradientError):
    """Some loss's gradient holds NaN or infinity, so no statistic is meaningful (exit 1)."""


class RunLogError(GradtoolError):
    """A run log (the Monitor's JSON lines) is missing, empty, or of another schema (exit 1)."""


class WeightingError(GradtoolError):
    """A weighting method's solver failed on this Gramian (exit 1)."""


class MissingDependencyError(GradtoolError):
    """An optional package a feature needs is not installed (exit 1); the hint says what to
    install."""


class UsageError(GradtoolError, ValueError):
    """A bad option value: out of range, a pattern matching nothing, a wrong combination (exit 2).

    It is also a `ValueError`, what Python code expects of a bad argument value.
    """

    exit_code = 2


class UserCodeError(GradtoolError):
    """An exception raised inside the user's gradfile; `traceback` holds only the user's frames."""

    def __init__(self, message: str, traceback: str, hint: str | None = None) -> None:
        super().__init__(message, hint, reason="user_code")
        self.traceback = traceback

    @classmethod
    def raised(
        cls, what: str, exc: BaseException, source: Path, hint: str | None = None, when: str = ""
    ) -> UserCodeError:
        """Return the error for `what` (e.g. "losses(model)") raising `exc` in `source`."""
        return cls(
            f"{what} raised {type(exc).__name__}{when}: {exc}",
            user_frames_traceback(exc, source),
            hint=hint,
        )


def user_frames_traceback(exc: BaseException, gradfile: Path | None = None) -> str:
    """Return the formatted traceback of `exc` with only the user's frames.

    A frame is dropped when its file lies inside gradtool's or torch's installed package (the
    loader that called the user's code above, `Module._call_impl` between the user's `losses`
    and their `forward` below) or is the import machinery (`<frozen importlib...>`); every other
    frame is kept: the gradfile, modules next to it, other libraries the user called. An
    exception raised inside torch (a shape mismatch in `F.linear`) thus shows the user's frames
    down to their last one, then the exception line. Frames of `gradfile` are always kept.
    """
    import traceback as tb

    frames = tb.extract_tb(exc.__traceback__)
    internal = _internal_folders()
    target = _resolved(str(gradfile)) if gradfile is not None else None
    kept = [
        f
        for f in frames
        if (target is not None and _resolved(f.filename) == target)
        or not _is_internal(f.filename, internal)
    ]
    if not kept:
        return ""  # nothing of the user's to show: the message alone says it
    lines = ["Traceback (most recent call last):\n", *tb.format_list(kept)]
    lines.extend(tb.format_exception_only(type(exc), exc))
    return "".join(lines)


def _internal_folders() -> tuple[str, ...]:
    """Return the package folders whose frames are not the user's: gradtool's, and torch's when
    it is loaded (it cannot have frames on the stack otherwise; errors.py never imports it)."""
    folders = [str(Path(__file__).resolve().parent)]
    torch = sys.modules.get("torch")
    torch_file = getattr(torch, "__file__", None)
    if torch_file:
        folders.append(str(Path(torch_file).resolve().parent))
    return tuple(os.path.join(f, "") for f in folders)


def _is_internal(filename: str, folders: tuple[str, ...]) -> bool:
    if filename.startswith("<frozen "):
        return True
    resolved = _resolved(filename)
    return resolved is not None and resolved.startswith(folders)


@functools.lru_cache(maxsize=1024)
def _resolved(filename: str) -> str | None:
    """Return `filename` as an absolute path with links resolved (None for `<string>` and the
    like, which name no file)."""
    if filename.startswith("<"):
        return None
    try:
        return str(Path(filename).resolve())
    except (OSError, RuntimeError):
        return None
