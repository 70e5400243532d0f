"""Weightings: functions from a Gramian G (m x m) to m loss weights w, each with its certificate.

A weighting sees only G, so it composes with any Jacobian source (the engine, a training-loop
monitor, a saved report): the combined direction is d = sum_i w_i g_i = J^T w, with
|d|^2 = w^T G w and <g_i, d> = (G w)_i. `WEIGHTINGS` maps each method's name to its
`WeightingMethod`: `method.solve(G, preference=None)` returns the weights and the residual of the
method's own defining conditions (`Solved`), `method(G)` the weights alone (a float64 tensor).
Its metadata: display name, description, whether it takes a preference vector, and the
properties the test suite checks (permutation equivariance, behaviour under G -> c G,
non-conflicting).

Every method is solved by gradtool's own float64 solvers (`gradtool.linalg.solvers`,
`gradtool.linalg.min_norm`), with no optional dependency: exact active sets for the quadratic
programs (MGDA, UPGrad, DualProj), a damped Newton method for the fixed points (Nash-MTL,
FairGrad), a bracketed root search over exact min-norm solves (CAGrad), closed forms for the rest
(IMTL-G, Aligned-MTL, PCGrad). Each solve is scale-free (on G / max_i G_ii, mapped back exactly).
The definitions are TorchJD's (the test suite cross-checks against it where its solvers converge).

Only *stateless* weightings are listed: weights from the current Gramian alone. Left out:

- GradVac, PCD, CR-MOGM, ExcessMTL, SDMGrad, MoDo: stateful (moving averages of norms, cosines
  or weights, inner-optimiser state), so one Gramian does not determine their weights; SDMGrad
  and MoDo also need Jacobians of independent mini-batches, not a Gramian.
- Random: random weights carry no information about the gradients.
- Krum, TrimmedMean: Byzantine-robust aggregation for federated learning (Krum selects rows and
  needs m >= n_byzantine + 3), not a multi-objective weighting.
- ConFIG, GradDrop: aggregators of the Jacobian itself with no Gramian weighting (GradDrop is
  random too).

Nash-MTL's weights are those of a first training step (its warm start and norm clipping are
training-loop state): the bargaining solution G w = 1/w itself. FairGrad's G w = w^(-1/alpha) is
that same solution at alpha = 1, so `fairgrad` uses alpha = 2 (between proportional and max-min
fairness) to add a method rather than repeat one. PCGrad projects in a random order when m >= 3;
the order is drawn as TorchJD draws it, from torch's generator seeded with 0 (inside
`torch.random.fork_rng`, leaving the caller's RNG untouched), so its weights are reproducible but
not permutation-equivariant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gradtool.errors import UsageError, WeightingError, opt

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

    from gradtool.linalg.solvers import Solved

PCGRAD_SEED = 0
CAGRAD_C = 0.5
FAIRGRAD_ALPHA = 2.0

Solver = Callable[["np.ndarray", "np.ndarray | None"], "Solved"]
_SINGULAR_HINT = (
    f"the Gramian may be (nearly) singular; try another method or {opt('normalize', 'l2')}"
)


@dataclass(frozen=True)
class WeightingMethod:
    """One weighting method: `solve(G, preference=None)` gives its weights and certificate.

    `scale_exponent` k states the behaviour under G -> c G (c > 0): w(c G) = c^k w(G); k = 0 for
    scale-invariant methods. `non_conflicting` methods promise (G w)_i >= 0 for every i (the
    direction does not increase any loss to first order); `permutation_equivariant` ones give
    w(P G P^T) = P w(G) for every permutation matrix P. `needs_full_rank` methods solve an
    equation that has no solution when the gradients are linearly dependent (Nash-MTL, FairGrad;
    IMTL-G's equal projections hold only when sqrt(diag G) lies in the range of G).
    """

    name: str
    display: str
    description: str
    solver: Solver
    takes_preference: bool = False
    permutation_equivariant: bool = True
    scale_exponent: float = 0.0
    non_conflicting: bool = False
    needs_full_rank: bool = False

    def solve(
        self, gramian: Tensor | np.ndarray, preference: Sequence[float] | None = None
    ) -> Solved:
        """Return the weights (float64, shape (m,)) of the Gramian `gramian`, with the residual
        of the method's defining conditions (`Solved.certified` when it is at most 1e-8).

        `gramian` is symmetrised as (G + G^T) / 2 in float64 first. `preference` (m entries) is
        only accepted by methods with `takes_preference`.

        Raises:
            ValueError: `gramian` is not square or not finite, or a preference is given to a
                method without one, or has the wrong length.
            WeightingError: the solver returned non-finite weights.
        """
        import numpy as np

        from gradtool.linalg.solvers import Solved, as_array

        g = as_array(gramian)
        m = g.shape[0]
        pref = None
        if preference is not None:
            if not self.takes_preference:
                raise ValueError(f"method {self.name!r} takes no preference vector")
            pref = np.asarray(_as_floats(preference), dtype=np.float64).reshape(-1)
            if pref.shape[0] != m:
                raise ValueError(
                    f"the preference should have {m} entries (one per loss); found {pref.shape[0]}"
                )
        try:
            solved = self.solver(g, pref)
        except (ArithmeticError, np.linalg.LinAlgError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightingError(
                f"method {self.name!r} ({self.display}) failed on this Gramian: {first}",
                hint=_SINGULAR_HINT,
                reason="solver_failed",
            ) from exc
        weights = np.asarray(solved.weights, dtype=np.float64).reshape(-1)
        if weights.shape[0] != m or not np.isfinite(weights).all():
            raise WeightingError(
                f"method {self.name!r} ({self.display}) returned unusable weights "
                f"{weights.tolist()} for {m} losses",
                hint=_SINGULAR_HINT,
                reason="unusable_weights",
            )
        return Solved(weights, solved.residual, solved.details)

    def __call__(self, gramian: Tensor, preference: Tensor | None = None) -> Tensor:
        """Return the weights alone, as a float64 CPU tensor (see `solve`)."""
        import torch

        return torch.from_numpy(self.solve(gramian, preference).weights)


def _as_floats(values: object) -> list[float]:
    if hasattr(values, "tolist"):
        values = values.tolist()  # type: ignore[union-attr]
    return [float(v) for v in values]  # type: ignore[union-attr]


def _solver(function: str, *, preference: bool = False, **fixed: object) -> Solver:
    """Return the Solver calling `gradtool.linalg.solvers.<function>(G[, preference], **fixed)`,
    imported on first use: the registry itself stays free of torch and numpy."""

    def solve(g: np.ndarray, pref: np.ndarray | None) -> Solved:
        from gradtool.linalg import solvers

        args = (g, pref) if preference else (g,)
        return getattr(solvers, function)(*args, **fixed)  # type: ignore[no-any-return]

    solve.__name__ = f"_{function}"
    return solve


def pcgrad_order(m: int) -> list[list[int]]:
    """Return, per loss, the order in which PCGrad visits the others: TorchJD's draws
    (`torch.randperm(m)` once per loss) from torch's generator seeded with `PCGRAD_SEED`,
    without touching the caller's RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PCGRAD_SEED)
        return [torch.randperm(m).tolist() for _ in range(m)]


_METHODS: tuple[WeightingMethod, ...] = (
    WeightingMethod(
        "mgda",
        "MGDA",
        "min-norm point of the convex hull of the gradients, solved exactly",
        _solver("mgda"),
        non_conflicting=True,
    ),
    WeightingMethod("mean", "Mean", "1/m each: the gradient of the mean loss", _solver("mean")),
    WeightingMethod("sum", "Sum", "1 each: the gradient of the summed loss", _solver("sum_")),
    WeightingMethod(
        "upgrad",
        "UPGrad",
        "each gradient projected onto the dual cone of all of them, then averaged",
        _solver("upgrad", preference=True),
        takes_preference=True,
        non_conflicting=True,
    ),
    WeightingMethod(
        "dualproj",
        "DualProj",
        "the mean gradient projected onto the dual cone of the gradients",
        _solver("dualproj", preference=True),
        takes_preference=True,
        non_conflicting=True,
    ),
    WeightingMethod(
        "pcgrad",
        "PCGrad",
        "each gradient's conflicting components removed, then summed (seeded order)",
        _solver("pcgrad", order=pcgrad_order),
        permutation_equivariant=False,
    ),
    WeightingMethod(
        "imtl_g",
        "IMTL-G",
        "equal projections of the direction on every unit gradient",
        _solver("imtl_g"),
        needs_full_rank=True,
    ),
    WeightingMethod(
        "aligned_mtl",
        "Aligned-MTL",
        "principal components of the gradients rescaled to the smallest one",
        _solver("aligned_mtl", preference=True),
        takes_preference=True,
    ),
    WeightingMethod(
        "cagrad",
        f"CAGrad (c={CAGRAD_C:g})",
        "largest worst-case decrease within a ball around the mean gradient",
        _solver("cagrad", c=CAGRAD_C),
    ),
    WeightingMethod(
        "nash_mtl",
        "Nash-MTL",
        "Nash bargaining solution G w = 1/w (first step, no norm clipping)",
        _solver("nash_mtl"),
        scale_exponent=-0.5,
        needs_full_rank=True,
    ),
    WeightingMethod(
        "fairgrad",
        f"FairGrad (alpha={FAIRGRAD_ALPHA:g})",
        f"alpha-fair utility: G w = w^(-1/alpha), alpha = {FAIRGRAD_ALPHA:g}",
        _solver("fairgrad", alpha=FAIRGRAD_ALPHA),
        scale_exponent=-FAIRGRAD_ALPHA / (1.0 + FAIRGRAD_ALPHA),
        needs_full_rank=True,
    ),
)

WEIGHTINGS: dict[str, WeightingMethod] = {method.name: method for method in _METHODS}
"""Every stateless weighting by CLI name, in the order `--compare` lists them (mgda first)."""

DEFAULT_METHOD = "mgda"


def canonical_name(name: str) -> str:
    """Return the registry key of a method name, ignoring case, '-' and '_' ('IMTL-G', 'imtlg',
    'imtl_g' -> 'imtl_g'); an unknown name comes back lower-cased, as given."""
    key = _squashed(name)
    return _BY_SQUASHED.get(key, name.strip().lower())


def _squashed(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


_BY_SQUASHED = {_squashed(name): name for name in WEIGHTINGS}


def parse_methods(text: str) -> tuple[str, ...]:
    """Return the registry names in a comma-separated list, in order, without duplicates.

    Raises:
        UsageError (a ValueError): a name is not a known method (the message lists the known
            ones), or the list is empty.
    """
    names = [raw.strip() for raw in text.split(",") if raw.strip()]
    if not names:
        raise UsageError(
            f"no method given; known methods: {known_methods()}",
            hint=f"e.g. {opt('methods', ('mgda', 'upgrad'))}",
            option="methods",
        )
    return check_methods(names)


def check_methods(names: Sequence[str]) -> tuple[str, ...]:
    """Return the registry names of `names` (any case, '-' or '_'), in order, without duplicates;
    raise a `UsageError` naming the first unknown one."""
    unknown = [name for name in names if canonical_name(name) not in WEIGHTINGS]
    if unknown:
        raise UsageError(
            f"unknown method {unknown[0]!r}; known methods: {known_methods()}",
            hint="method names ignore case, '-' and '_' (imtl_g, IMTL-G and imtlg are one)",
            option="methods",
        )
    return tuple(dict.fromkeys(canonical_name(name) for name in names))


def known_methods() -> str:
    """Return the known method names, comma-separated, in registry order."""
    return ", ".join(WEIGHTINGS)


def preference_methods() -> list[str]:
    """Return the names of the methods that take a preference vector."""
    return [m.name for m in WEIGHTINGS.values() if m.takes_preference]
