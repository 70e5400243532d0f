"""Tensors of statistics to the plain values of the result documents."""

from __future__ import annotations

from typing import Any

import torch

from gradtool.results.base import finite_or_none


def to_list(t: torch.Tensor) -> Any:
    """Return a nested list of floats with NaN / inf as None (JSON's null)."""
    return finite_or_none(t.tolist())
