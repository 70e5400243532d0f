"""Weightings: functions from a Gramian G (m x m) to m loss weights w.

A weighting sees only G, so it composes with any Jacobian source (the engine, a training-loop
monitor, a saved report): the combined direction is d = sum_i w_i g_i = J^T w, with
|d|^2 = w^T G w and <g_i, d> = (G w)_i. `WEIGHTINGS` maps each CLI method name to its
`WeightingMethod`, a callable `method(G, preference=None) -> w` (float64, shape (m,)) that also
carries its metadata: display name, description, whether it takes a preference vector, which
optional packages it needs, and the properties the test suite checks (permutation equivariance,
behaviour under G -> c G, non-conflicting).

`mgda`, `mean` and `sum` are gradtool's own (`mgda` is the exact solver of
`gradtool.linalg.min_norm`); the others wrap TorchJD's `*Weighting` classes
(`torchjd.aggregation`), imported lazily so that importing this module (and `gradtool --help`)
needs neither torch nor torchjd. Methods whose
solver needs numpy + qpsolvers + quadprog (UPGrad, DualProj), cvxpy (CAGrad, Nash-MTL) or scipy
(FairGrad) sit behind the optional extra `pip install 'gradtool[solvers]'`; asking for one
without its packages raises `MissingDependencyError` (exit 1) with that hint.

Only *stateless* weightings are listed: weights from the current Gramian alone. Left out:

- GradVac, PCD, CR-MOGM, ExcessMTL, SDMGrad, MoDo: stateful (moving averages of norms, cosines
  or weights, inner-optimiser state), so one Gramian does not determine their weights; SDMGrad
  and MoDo also need Jacobians of independent mini-batches, not a Gramian.
- Random: random weights carry no information about the gradients.
- Krum, TrimmedMean: Byzantine-robust aggregation for federated learning (Krum selects rows and
  needs m >= n_byzantine + 3), not a multi-objective weighting.
- ConFIG, GradDrop: aggregators of the Jacobian itself with no Gramian weighting (GradDrop is
  random too).
- TorchJD's MGDA (Frank-Wolfe with early stopping): `mgda` here is the exact solver; the tests
  check the two agree.

Nash-MTL is stateful in TorchJD only through the warm start of its iterative solver; a fresh
instance per call gives the weights of a first training step, a function of G alone, and norm
clipping is disabled (`max_norm=0`) so the weights are the bargaining solution G w = 1/w itself.
TorchJD's Nash-MTL solver misses G w = 1/w by up to 70% when |G|_F is far from 1 (for instance
|G|_F ~ 10), so Nash-MTL and FairGrad are solved on G / |G|_F and their weights rescaled exactly
(w -> w / sqrt(s), resp. w -> s^(-alpha / (1 + alpha)) w).
FairGrad's G w = w^(-1/alpha) is that same solution at alpha = 1, so `fairgrad` uses alpha = 2
(between proportional and max-min fairness) to add a method rather than repeat one.
UPGrad and DualProj solve their dual-cone projections with TorchJD's quadprog projector, but with
a ridge of 1e-12 instead of its default 1e-4 on the trace-normalised Gramian, so their promise
(G w)_i >= 0 holds to round-off (with 1e-4 it fails by up to ~2e-4 relative, and the table would
say "raises a loss" for a method that cannot); if quadprog then rejects the matrix as not
positive definite, the default ridge is used. PCGrad projects in a random order when m >= 3; the
order is drawn from a generator seeded with 0 (inside `torch.random.fork_rng`, leaving the
caller's RNG untouched), so its weights are reproducible but not permutation-equivariant.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gradtool.errors import MissingDependencyError, UsageError, WeightingError, opt

if TYPE_CHECKING:
    from torch import Tensor

SOLVERS_EXTRA = "solvers"
INSTALL_SOLVERS = f"pip install 'gradtool[{SOLVERS_EXTRA}]'"
INSTALL_TORCHJD = "pip install 'torchjd>=0.18,<0.19'"
PCGRAD_SEED = 0
CAGRAD_C = 0.5
FAIRGRAD_ALPHA = 2.0
# Ridge added by TorchJD's quadprog projector to the trace-normalised Gramian (its default, 1e-4,
# lets UPGrad / DualProj miss their promise (G w)_i >= 0 by up to ~2e-4 relative).
PROJECTOR_REG_EPS = 1e-12

_QP = ("numpy", "qpsolvers", "quadprog")
_CVX_CLARABEL = ("numpy", "cvxpy", "clarabel")
_CVX_ECOS = ("numpy", "cvxpy", "ecos")
_SCIPY = ("numpy", "scipy")
_SINGULAR_HINT = (
    f"the Gramian may be (nearly) singular; try another method or {opt('normalize', 'l2')}"
)


Weighting = Callable[..., "Tensor"]
"""Any callable Gramian -> weights (a `WeightingMethod`, or `mgda` / `mean` / `sum_` below)."""


@dataclass(frozen=True)
class WeightingMethod:
    """One weighting method: `method(G, preference=None)` returns its weights, plus metadata.

    `scale_exponent` k states the behaviour under G -> c G (c > 0): w(c G) = c^k w(G); k = 0 for
    scale-invariant methods. `non_conflicting` methods promise (G w)_i >= 0 for every i (the
    direction does not increase any loss to first order); `permutation_equivariant` ones give
    w(P G P^T) = P w(G) for every permutation matrix P. `needs_full_rank` methods solve an
    equation that has no solution when the gradients are linearly dependent (Nash-MTL, FairGrad).
    """

    name: str
    display: str
    description: str
    compute: Callable[[Tensor, Tensor | None], Tensor]
    takes_preference: bool = False
    requires: tuple[str, ...] = ()
    permutation_equivariant: bool = True
    scale_exponent: float = 0.0
    non_conflicting: bool = False
    needs_full_rank: bool = False

    def missing(self) -> list[str]:
        """Return the packages this method needs that cannot be imported (empty if none)."""
        return [name for name in self.requires if importlib.util.find_spec(name) is None]

    @property
    def available(self) -> bool:
        """Return whether every package this method needs is installed."""
        return not self.missing()

    def install_hint(self) -> str:
        """Return the pip command that installs what this method needs."""
        missing = self.missing()
        return INSTALL_TORCHJD if missing == ["torchjd"] else INSTALL_SOLVERS

    def __call__(self, gramian: Tensor, preference: Tensor | None = None) -> Tensor:
        """Return the weights w (float64, shape (m,), on the CPU) of the Gramian `gramian`.

        `gramian` is symmetrised as (G + G^T) / 2 in float64 first. `preference` (shape (m,))
        is only accepted by methods with `takes_preference`.

        Raises:
            ValueError: `gramian` is not square, or a preference is given to a method without one.
            MissingDependencyError: a package the method needs is not installed.
            WeightingError: the solver failed or returned non-finite weights.
        """
        import torch

        g = torch.as_tensor(gramian).detach().to(device="cpu", dtype=torch.float64)
        if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] == 0:
            raise ValueError(f"a Gramian should be a square matrix; found shape {tuple(g.shape)}")
        g = (g + g.T) / 2
        m = g.shape[0]
        pref = None
        if preference is not None:
            if not self.takes_preference:
                raise ValueError(f"method {self.name!r} takes no preference vector")
            pref = torch.as_tensor(preference, dtype=torch.float64).reshape(-1)
            if pref.shape[0] != m:
                raise ValueError(
                    f"the preference should have {m} entries (one per loss); found {pref.shape[0]}"
                )
        missing = self.missing()
        if missing:
            raise MissingDependencyError(
                f"method {self.name!r} ({self.display}) needs {', '.join(missing)}, "
                "which is not installed",
                hint=self.install_hint(),
            )
        try:
            weights = self.compute(g, pref)
        except Exception as exc:  # a third-party solver's failure (cvxpy's SolverError, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightingError(
                f"method {self.name!r} ({self.display}) failed on this Gramian: {first}",
                hint=_SINGULAR_HINT,
                reason="solver_failed",
            ) from exc
        weights = torch.as_tensor(weights).detach().to(device="cpu", dtype=torch.float64)
        weights = weights.reshape(-1)
        if weights.shape[0] != m or not bool(torch.isfinite(weights).all()):
            raise WeightingError(
                f"method {self.name!r} ({self.display}) returned unusable weights "
                f"{weights.tolist()} for {m} losses",
                hint=_SINGULAR_HINT,
                reason="unusable_weights",
            )
        return weights


def mgda(gramian: Tensor) -> Tensor:
    """Return the exact MGDA min-norm weights: argmin_{w in simplex} w^T G w."""
    from gradtool.linalg.min_norm import min_norm_weights

    return min_norm_weights(gramian).weights


def mean(gramian: Tensor) -> Tensor:
    """Return uniform weights 1/m: the gradient of the mean loss."""
    import torch

    m = gramian.shape[0]
    return torch.full((m,), 1.0 / m, dtype=torch.float64)


def sum_(gramian: Tensor) -> Tensor:
    """Return unit weights: the gradient of the summed loss."""
    import torch

    return torch.ones(gramian.shape[0], dtype=torch.float64)


def factor(gramian: Tensor) -> Tensor:
    """Return A (m x m) with A A^T = G: A = V diag(sqrt(max(lambda, 0))), G = V diag(lambda) V^T.

    For methods that TorchJD defines on a matrix but that only use its Gramian (Nash-MTL).
    """
    import torch

    eigenvalues, eigenvectors = torch.linalg.eigh(gramian)
    return eigenvectors * torch.sqrt(torch.clamp(eigenvalues, min=0.0))[None, :]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the solvers' warnings (cvxpy's DPP notice, ...): the report carries no noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _dual_cone(
    cls: Callable[..., Callable[[Tensor], Tensor]], g: Tensor, pref: Tensor | None
) -> Tensor:
    """Return TorchJD's dual-cone weights, solved with `PROJECTOR_REG_EPS`, else its default."""
    from torchjd.linalg import QuadprogProjector

    try:
        return cls(pref_vector=pref, projector=QuadprogProjector(reg_eps=PROJECTOR_REG_EPS))(g)
    except ValueError:  # quadprog: "matrix P is not positive definite"; use TorchJD's default
        return cls(pref_vector=pref)(g)


def _upgrad(g: Tensor, pref: Tensor | None) -> Tensor:
    from torchjd.aggregation import UPGradWeighting

    return _dual_cone(UPGradWeighting, g, pref)


def _dualproj(g: Tensor, pref: Tensor | None) -> Tensor:
    from torchjd.aggregation import DualProjWeighting

    return _dual_cone(DualProjWeighting, g, pref)


def _pcgrad(g: Tensor, pref: Tensor | None) -> Tensor:
    import torch
    from torchjd.aggregation import PCGradWeighting

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PCGRAD_SEED)
        return PCGradWeighting()(g)


def _imtl_g(g: Tensor, pref: Tensor | None) -> Tensor:
    from torchjd.aggregation import IMTLGWeighting

    return IMTLGWeighting()(g)


def _aligned_mtl(g: Tensor, pref: Tensor | None) -> Tensor:
    from torchjd.aggregation import AlignedMTLWeighting

    return AlignedMTLWeighting(pref_vector=pref)(g)


def _cagrad(g: Tensor, pref: Tensor | None) -> Tensor:
    from torchjd.aggregation import CAGradWeighting

    with _quiet():
        return CAGradWeighting(c=CAGRAD_C)(g)


def _unit_scale(g: Tensor) -> float:
    """Return s = |G|_F (1 for G = 0), so that G / s has unit Frobenius norm."""
    s = float(g.norm())
    return s if s > 0 else 1.0


def _nash_mtl(g: Tensor, pref: Tensor | None) -> Tensor:
    """Return Nash-MTL's w with G w = 1/w: solved on G / s, s = |G|_F, then w = w_1 / sqrt(s).

    TorchJD's solver is only accurate for |G|_F near 1 (it normalises G by |G|_F for the cvxpy
    problem but tests convergence on the normalised Gramian against the raw 1/w), so the problem
    is handed to it already normalised; (G / s) w_1 = 1 / w_1 gives G w = 1/w for w = w_1 / sqrt(s).
    """
    from torchjd.aggregation import NashMTL

    s = _unit_scale(g)
    aggregator = NashMTL(n_tasks=g.shape[0], max_norm=0.0, update_weights_every=1)
    with _quiet():
        return aggregator.weighting(factor(g / s)) / s**0.5


def _fairgrad(g: Tensor, pref: Tensor | None) -> Tensor:
    """Return FairGrad's w with G w = w^(-1/alpha): solved on G / s, then w = s^k w_1.

    With k = -alpha / (1 + alpha), (G / s) w_1 = w_1^(-1/alpha) gives G w = w^(-1/alpha); scipy's
    least-squares tolerances are absolute, so solving at |G|_F = 1 keeps the accuracy scale-free.
    """
    from torchjd.aggregation import FairGradWeighting

    s = _unit_scale(g)
    with _quiet():
        w = FairGradWeighting(alpha=FAIRGRAD_ALPHA)(g / s)
    return w * s ** (-FAIRGRAD_ALPHA / (1.0 + FAIRGRAD_ALPHA))


def _own(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor | None], Tensor]:
    def compute(g: Tensor, pref: Tensor | None) -> Tensor:
        return fn(g)

    compute.__doc__ = fn.__doc__
    return compute


_METHODS: tuple[WeightingMethod, ...] = (
    WeightingMethod(
        "mgda",
        "MGDA",
        "min-norm point of the convex hull of the gradients, solved exactly",
        _own(mgda),
        non_conflicting=True,
    ),
    WeightingMethod("mean", "Mean", "1/m each: the gradient of the mean loss", _own(mean)),
    WeightingMethod("sum", "Sum", "1 each: the gradient of the summed loss", _own(sum_)),
    WeightingMethod(
        "upgrad",
        "UPGrad",
        "each gradient projected onto the dual cone of all of them, then averaged",
        _upgrad,
        takes_preference=True,
        requires=("torchjd", *_QP),
        non_conflicting=True,
    ),
    WeightingMethod(
        "dualproj",
        "DualProj",
        "the mean gradient projected onto the dual cone of the gradients",
        _dualproj,
        takes_preference=True,
        requires=("torchjd", *_QP),
        non_conflicting=True,
    ),
    WeightingMethod(
        "pcgrad",
        "PCGrad",
        "each gradient's conflicting components removed, then summed (seeded order)",
        _pcgrad,
        requires=("torchjd",),
        permutation_equivariant=False,
    ),
    WeightingMethod(
        "imtl_g",
        "IMTL-G",
        "equal projections of the direction on every unit gradient",
        _imtl_g,
        requires=("torchjd",),
    ),
    WeightingMethod(
        "aligned_mtl",
        "Aligned-MTL",
        "principal components of the gradients rescaled to the smallest one",
        _aligned_mtl,
        takes_preference=True,
        requires=("torchjd",),
    ),
    WeightingMethod(
        "cagrad",
        f"CAGrad (c={CAGRAD_C:g})",
        "largest worst-case decrease within a ball around the mean gradient",
        _cagrad,
        requires=("torchjd", *_CVX_CLARABEL),
    ),
    WeightingMethod(
        "nash_mtl",
        "Nash-MTL",
        "Nash bargaining solution G w = 1/w (first step, no norm clipping)",
        _nash_mtl,
        requires=("torchjd", *_CVX_ECOS),
        scale_exponent=-0.5,
        needs_full_rank=True,
    ),
    WeightingMethod(
        "fairgrad",
        f"FairGrad (alpha={FAIRGRAD_ALPHA:g})",
        f"alpha-fair utility: G w = w^(-1/alpha), alpha = {FAIRGRAD_ALPHA:g}",
        _fairgrad,
        requires=("torchjd", *_SCIPY),
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
        ValueError: a name is not a known method (the message lists the known ones), or the
            list is empty.
    """
    names: list[str] = []
    for raw in text.split(","):
        if not raw.strip():
            continue
        name = canonical_name(raw)
        if name not in WEIGHTINGS:
            raise ValueError(f"unknown method {raw.strip()!r}; known methods: {known_methods()}")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"no method given; known methods: {known_methods()}")
    return tuple(names)


def check_methods(names: Sequence[str]) -> tuple[str, ...]:
    """Return the registry names of `names` (any case, '-' or '_'), in order, without duplicates;
    raise a `UsageError` naming the first unknown one."""
    names = [canonical_name(name) for name in names]
    unknown = [name for name in names if name not in WEIGHTINGS]
    if unknown:
        raise UsageError(
            f"unknown method {unknown[0]!r}",
            hint=f"known methods: {known_methods()}",
            option="methods",
        )
    return tuple(dict.fromkeys(names))


def known_methods() -> str:
    """Return the known method names, comma-separated, in registry order."""
    return ", ".join(WEIGHTINGS)


def preference_methods() -> list[str]:
    """Return the names of the methods that take a preference vector."""
    return [m.name for m in WEIGHTINGS.values() if m.takes_preference]
