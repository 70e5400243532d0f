"""The failures gradtool expects, each carrying one clear line, a hint and an exit code.

The CLI maps every `GradtoolError` to `Error: ...` / `Hint: ...` on stderr and its exit code, in one
place; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class GradtoolError(Exception):
    """An expected failure: a message, an optional hint, and the process exit code."""

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


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


class UsageError(GradtoolError):
    """Bad command-line usage: an option value out of range, a pattern matching nothing (exit 2)."""

    exit_code = 2


class UserCodeError(GradtoolError):
    """An exception raised inside the user's gradfile; `traceback` holds only the user's frames."""

    def __init__(self, message: str, traceback: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
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


def user_frames_traceback(exc: BaseException, gradfile: Path) -> str:
    """Return the formatted traceback of `exc`, starting at the first frame inside `gradfile`.

    Frames of gradtool (and of the import machinery) above the user's code are dropped, so the
    user sees their own frames first; frames below (torch internals they called) are kept.
    """
    import traceback as tb

    frames = tb.extract_tb(exc.__traceback__)
    target = str(gradfile.resolve())
    start = next(
        (i for i, f in enumerate(frames) if _same_file(f.filename, target)),
        None,
    )
    if start is None:
        # The exception came from code the gradfile imported or called without a frame of its
        # own on the stack (e.g. a SyntaxError); keep everything that is not gradtool's.
        kept = [f for f in frames if "/gradtool/" not in f.filename.replace("\\", "/")]
    else:
        kept = frames[start:]
    if not kept:
        return ""  # nothing of the user's to show: the message alone says it
    lines = ["Traceback (most recent call last):\n", *tb.format_list(kept)]
    lines.extend(tb.format_exception_only(type(exc), exc))
    return "".join(lines)


def _same_file(filename: str, target: str) -> bool:
    try:
        return str(Path(filename).resolve()) == target
    except OSError:
        return False
