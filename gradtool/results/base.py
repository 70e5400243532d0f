"""What every result document shares: the schema version, matrices with null entries, strict
JSON (NaN and inf as null) and atomic writing. Torch-free, so a reader needs no torch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

SCHEMA_VERSION = 1

Matrix = list[list[float | None]]


def finite_or_none(obj: Any) -> Any:
    """Return `obj` with every non-finite float (NaN, inf) replaced by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def nan_for_none(matrix: Matrix) -> list[list[float]]:
    """Return `matrix` with its null entries as NaN: the float matrix that computing needs."""
    return [[math.nan if v is None else float(v) for v in row] for row in matrix]


@dataclass
class Document:
    """A result serialised as one JSON document: `schema_version` first, then its fields.

    `_fixed` entries come right after the version (e.g. a `command` the dataclass does not hold);
    fields named in `_optional` are left out while they are None.
    """

    _fixed: ClassVar[dict[str, Any]] = {}
    _optional: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON document as a dict (schema_version first, NaN/inf as None)."""
        body = asdict(self)
        for key in self._optional:
            if body.get(key) is None:
                body.pop(key, None)
        return finite_or_none({"schema_version": SCHEMA_VERSION, **self._fixed, **body})

    def to_json(self, indent: int | None = 2) -> str:
        """Return the JSON document as text; strict JSON (no NaN)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that no reader ever sees a partial document, and so that
    nothing but a regular file is ever replaced.

    - A regular file, or a path where nothing exists yet: the text goes to a temp file in the
      same folder, which is then renamed over `path` (atomic); an existing file keeps its
      permission bits, a new one gets the usual 0o666 less the umask.
    - A symbolic link to a regular file (or a dangling one): its target is replaced that way, and
      the link is kept.
    - Anything else that exists (a character device such as /dev/null, a FIFO, a terminal): the
      text is written into it in place, as the shell's `>` does; it is never replaced or
      unlinked. Opening a FIFO waits for a reader, as `>` does.
    """
    path = Path(path)
    try:
        st = os.stat(path)  # follows links: what a write would reach
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    mode = stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # mkstemp's 0600 would make the report private
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """Return the process's umask (reading it means setting it: it is set straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask
