"""What every result document shares: the schema version, matrices with null entries, strict
JSON (NaN and inf as null) and atomic writing. Torch-free, so a reader needs no torch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
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
    """Write `text` to `path` via a temp file in the same folder and a rename: never partial."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the report private
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
