"""The weighting methods: each a function from a Gramian G (m x m) to m loss weights, solved
exactly with a certificate (the residual of the method's defining conditions).

`WEIGHTINGS` maps each method's name to its `WeightingMethod`; see `registry` for each method.
"""

from gradtool.errors import MissingDependencyError, WeightingError
from gradtool.weightings.registry import (
    DEFAULT_METHOD,
    WEIGHTINGS,
    WeightingMethod,
    canonical_name,
    check_methods,
    known_methods,
    parse_methods,
    preference_methods,
)

__all__ = [
    "DEFAULT_METHOD",
    "WEIGHTINGS",
    "MissingDependencyError",
    "WeightingError",
    "WeightingMethod",
    "canonical_name",
    "check_methods",
    "known_methods",
    "parse_methods",
    "preference_methods",
]
