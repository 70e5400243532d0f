"""Exact float64 solvers behind the weighting methods, each returning its weights and a certificate.

Every solver takes a Gramian G = J J^T (m x m, symmetric PSD) and returns a `Solved`: the weights
w (the combined direction is d = J^T w) and `residual`, the relative violation of the method's own
defining conditions (0 in exact arithmetic). Each solve runs on G / s with s = max_i G_ii and maps
the weights back exactly, w(G) = s^k w(G / s) with the method's scale exponent k, so results do not
depend on the gradients' scale (1e-12 or 1e12 alike).

- Dual-cone projection (UPGrad, DualProj): v = argmin_{v >= u} v^T G v, a convex QP with lower
  bounds, solved by an active-set method (Lawson-Hanson) on x = v - u >= 0. KKT: v >= u,
  lam = G v >= 0, lam_i (v_i - u_i) = 0; lam >= 0 is the promise (G w)_i >= 0.
- Nash-MTL: G w = 1 / w, w > 0, the stationary point of the strictly convex
  f(w) = 1/2 w^T G w - sum_i log w_i: a damped Newton method that keeps w > 0.
- FairGrad: G w = w^(-1/alpha), the stationary point of 1/2 w^T G w - sum_i h(w_i) with
  h'(w) = w^(-1/alpha), also strictly convex: the same Newton method.
- CAGrad: min_{w in simplex} <g_0, g_w> + c |g_0| |g_w| (g_0 = J^T p, g_w = J^T w), convex. Its
  KKT conditions are those of the min-norm problem of the shifted gradients g_i + s g_0 at the s
  where |g_w| = c |g_0| s, so it is solved by a bracketed root search on s, each step an exact
  min-norm solve. Weights p + (c |g_0| / |g_w|) w.
- IMTL-G (G w = mu sqrt(diag G), sum w = 1), Aligned-MTL (B = sqrt(l_min) V L^(-1/2) V^T on the
  range of G, w = B p) and PCGrad (sequential projections, seeded order) are closed forms; their
  certificates check the defining identities on the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from gradtool.linalg.min_norm import min_norm_weights

EPS = float(np.finfo(np.float64).eps)
# A result certifies when its relative residual is at most this.
CERTIFY_RTOL = 1e-8
_NEWTON_MAX_ITER = 200
_ROOT_MAX_ITER = 200


@dataclass(frozen=True)
class Solved:
    """A method's weights and the relative residual of its defining conditions.

    `details` holds method-specific diagnostics (e.g. PCGrad's removed fractions).
    """

    weights: np.ndarray
    residual: float
    details: dict[str, object] = field(default_factory=dict)

    @property
    def certified(self) -> bool:
        """Return whether the residual is at most `CERTIFY_RTOL` (and finite)."""
        return math.isfinite(self.residual) and self.residual <= CERTIFY_RTOL


def as_array(gramian: np.ndarray | torch.Tensor) -> np.ndarray:
    """Return G as a symmetric float64 numpy array (square, finite, checked)."""
    if isinstance(gramian, torch.Tensor):
        g = gramian.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        g = np.asarray(gramian, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] == 0:
        raise ValueError(f"a Gramian should be a non-empty square matrix; found shape {g.shape}")
    if not np.isfinite(g).all():
        raise ValueError("Gramian entries should be finite")
    return (g + g.T) / 2


def unit_scale(g: np.ndarray) -> float:
    """Return s = max_i G_ii (1 when G has no positive diagonal): solves run on G / s."""
    top = float(np.max(np.diag(g), initial=0.0))
    return top if top > 0 else 1.0


def mean(gramian: np.ndarray) -> Solved:
    """Mean: w = 1/m each, the gradient of the mean loss (exact by construction)."""
    m = as_array(gramian).shape[0]
    return Solved(np.full(m, 1.0 / m), 0.0)


def sum_(gramian: np.ndarray) -> Solved:
    """Sum: w = 1 each, the gradient of the summed loss (exact by construction)."""
    return Solved(np.ones(as_array(gramian).shape[0]), 0.0)


# --- dual-cone projection: UPGrad and DualProj -------------------------------------------------


def nonnegative_qp(
    a: np.ndarray, c: np.ndarray, start: np.ndarray | None = None, *, newton: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Return (x, free) with x = argmin_{x >= 0} 1/2 x^T A x + c^T x, for a PSD A with c in
    range(A), exactly; `free` marks the indices with x_i > 0.

    Lawson-Hanson's active set on the gradient A x + c: the most negative reduced gradient enters
    the free set F, the equality-constrained minimiser on F (A_FF z = -c_F) is taken when it is
    positive, else the step from x is cut where a weight reaches 0 and that index leaves F.
    `start` (a guess of F, e.g. a neighbouring problem's) is taken as the first free set: the
    same cutting steps, from x = 0, make it consistent. With `newton` (A nonsingular), the
    primal-dual active-set method is tried first: it usually settles in a few steps.
    """
    n = c.shape[0]
    scale, tol = _qp_scale(a, c)
    guess = _primal_dual_active_set(a, c, start) if newton else None
    if guess is not None:
        return guess
    free = np.zeros(n, dtype=bool) if start is None else start.copy()
    x = np.zeros(n)
    for outer in range(4 * n + 8):
        if outer or start is None or not free.any():
            grad = a @ x + c
            candidates = np.where(~free & (grad < -tol))[0]
            if candidates.size == 0:
                break
            free[candidates[np.argmin(grad[candidates])]] = True
        for _ in range(n + 2):
            idx = np.where(free)[0]
            z = np.zeros(n)
            z[idx] = _solve_psd(a[idx][:, idx], -c[idx])
            if (z[idx] > 0).all():
                x = z
                break
            blocking = idx[z[idx] <= 0]
            steps = x[blocking] / np.maximum(x[blocking] - z[blocking], 1e-300)
            alpha = float(np.clip(np.min(steps), 0.0, 1.0))
            x = x + alpha * (z - x)
            leaving = free & (x <= tol / scale)
            if not leaving.any():  # round-off: drop the most negative of the blocking ones
                leaving[blocking[np.argmin(z[blocking])]] = True
            free &= ~leaving
            x[~free] = 0.0
    return np.maximum(x, 0.0), free


def _qp_scale(a: np.ndarray, c: np.ndarray) -> tuple[float, float]:
    """Return (s, tol) for the nonnegative QP: s = max(max_i |A_ii|, max_i |c_i|), the size of its
    gradients, and tol = 64 eps s, below which a reduced gradient is round-off."""
    scale = max(float(np.max(np.abs(np.diag(a)), initial=0.0)), float(np.max(np.abs(c))), 1e-300)
    return scale, 64 * EPS * scale


def _primal_dual_active_set(
    a: np.ndarray, c: np.ndarray, start: np.ndarray | None, max_iter: int = 25
) -> tuple[np.ndarray, np.ndarray] | None:
    """Return the exact (x, free) of the nonnegative QP by the primal-dual active-set method
    (a semismooth Newton method on min(x, A x + c) = 0), or None when it does not settle.

    Each step solves A_FF x_F = -c_F on the predicted free set F = {i : x_i - lam_i > 0}
    (lam = A x + c); it stops when F repeats and the KKT conditions hold to round-off. Usually a
    few steps; Lawson-Hanson's finite method takes over when it cycles.
    """
    n = c.shape[0]
    tol = _qp_scale(a, c)[1]
    free = (-c > 0) if start is None else start.copy()
    seen: set[bytes] = set()
    for _ in range(max_iter):
        key = free.tobytes()
        if key in seen:
            return None
        seen.add(key)
        x = np.zeros(n)
        idx = np.where(free)[0]
        x[idx] = _solve_psd(a[idx][:, idx], -c[idx])
        lam = a @ x + c
        if (x[idx] >= 0).all() and (lam[~free] >= -tol).all():
            return np.maximum(x, 0.0), free & (x > 0)
        free = x - lam / max(float(np.max(np.diag(a))), 1e-300) > 0
    return None


def _solve_psd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return a solution of A z = b for a PSD A (LU where A is nonsingular, else least-norm)."""
    if a.shape[0] == 0:
        return np.zeros(0)
    try:
        z = np.linalg.solve(a, b)
        if np.isfinite(z).all() and np.abs(a @ z - b).max() <= 1e-10 * max(np.abs(b).max(), 1e-300):
            return z
    except np.linalg.LinAlgError:
        pass
    return np.linalg.lstsq(a, b, rcond=None)[0]


def project_dual_cone(
    g: np.ndarray, u: np.ndarray, start: np.ndarray | None = None, *, full_rank: bool = True
) -> tuple[np.ndarray, float, np.ndarray]:
    """Return (v, residual): v = argmin_{v >= u} v^T G v and the relative KKT residual.

    J^T v is the projection of J^T u onto the dual cone {x : J x >= 0}. With lam = G v, the KKT
    conditions are v - u >= 0, lam >= 0, lam_i (v_i - u_i) = 0; the residual is their largest
    violation relative to max_i G_ii sum_i |v_i| (which bounds |lam_i|) and to max_i |u_i|.
    Also returned: the indices with v_i > u_i (a warm start for a neighbouring projection).
    """
    x, free = nonnegative_qp(g, g @ u, start, newton=full_rank)
    v = u + x
    lam = g @ v
    bound = max(float(np.max(np.diag(g), initial=0.0)) * float(np.abs(v).sum()), 1e-300)
    size = max(float(np.abs(u).max()), 1e-300)
    residual = max(
        0.0,
        float(np.max(-x, initial=0.0)) / size,
        float(np.max(-lam, initial=0.0)) / bound,
        float(np.max(np.abs(lam * x), initial=0.0)) / (bound * size),
    )
    return v, residual, free


def upgrad(gramian: np.ndarray, preference: np.ndarray | None = None) -> Solved:
    """UPGrad: w = sum_i v_i with v_i = argmin_{v >= p_i e_i} v^T G v (p: mean 1/m by default).

    Each J^T v_i projects p_i g_i onto the dual cone of the gradients, so (G w)_i >= 0 for every i.
    """
    g = as_array(gramian)
    m = g.shape[0]
    p = np.full(m, 1.0 / m) if preference is None else np.asarray(preference, dtype=np.float64)
    gs = g / unit_scale(g)
    full_rank = _eigh(gs)[2] == m
    w = np.zeros(m)
    residual = 0.0
    free: np.ndarray | None = None
    for i in range(m):
        u = np.zeros(m)
        u[i] = p[i]
        start = None if free is None else free.copy()
        if start is not None:
            start[i] = False  # v_i = p_i is the likely bound of the i-th projection
        v, r, free = project_dual_cone(gs, u, start, full_rank=full_rank)
        w += v
        residual = max(residual, r)
    return Solved(w, residual)


def dualproj(gramian: np.ndarray, preference: np.ndarray | None = None) -> Solved:
    """DualProj: w = argmin_{v >= p} v^T G v, the projection of J^T p onto the dual cone."""
    g = as_array(gramian)
    m = g.shape[0]
    p = np.full(m, 1.0 / m) if preference is None else np.asarray(preference, dtype=np.float64)
    gs = g / unit_scale(g)
    v, residual, _ = project_dual_cone(gs, p, full_rank=_eigh(gs)[2] == m)
    return Solved(v, residual)


# --- Nash-MTL and FairGrad: G w = w^(-1/alpha), w > 0 --------------------------------------------


def _power_fixed_point(g: np.ndarray, alpha: float) -> tuple[np.ndarray, float, int]:
    """Return (w, residual, iterations) for G w = w^(-1/alpha), w > 0 (G scaled to max G_ii = 1).

    Damped Newton on f(w) = 1/2 w^T G w - sum_i h(w_i), h'(w) = w^(-1/alpha): gradient
    G w - w^(-1/alpha), Hessian G + diag(w^(-1/alpha - 1) / alpha) (positive definite for w > 0),
    steps cut to stay inside w > 0 and to decrease f (Armijo). The residual is
    max_i |(G w)_i w_i^(1/alpha) - 1|.
    """
    k = 1.0 / alpha

    def h(w: np.ndarray) -> np.ndarray:
        return np.log(w) if alpha == 1.0 else w ** (1.0 - k) / (1.0 - k)

    def f(w: np.ndarray) -> float:
        return 0.5 * float(w @ g @ w) - float(h(w).sum())

    def residual_of(w: np.ndarray) -> float:
        value = float(np.max(np.abs((g @ w) * w**k - 1.0)))
        return value if math.isfinite(value) else math.inf

    diag = np.diag(g)
    # the solution for a diagonal G, a good start: G_ii w_i = w_i^(-k)
    w = np.where(diag > 0, np.maximum(diag, 1e-300) ** (-1.0 / (1.0 + k)), 1.0)
    value, residual = f(w), residual_of(w)
    iterations, stalled = 0, 0
    for iterations in range(1, _NEWTON_MAX_ITER + 1):  # noqa: B007 (returned)
        grad = g @ w - w ** (-k)
        hess = g + np.diag(k * w ** (-k - 1.0))
        try:
            step = -np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            step = -np.linalg.lstsq(hess, grad, rcond=None)[0]
        decrement = float(-grad @ step)
        if not (math.isfinite(decrement) and decrement > 0.0):
            break
        t = 1.0
        shrinking = step < 0
        if shrinking.any():
            t = min(1.0, 0.99 * float(np.min(-w[shrinking] / step[shrinking])))
        accepted = False
        while t > 1e-20:
            trial = w + t * step
            trial_value = f(trial)
            # Armijo on f; where f is flat to rounding (near the solution), progress on the
            # equations themselves (a smaller residual) is accepted instead.
            if trial_value <= value - 1e-4 * t * decrement or residual_of(trial) < residual:
                accepted = True
                break
            t *= 0.5
        if not accepted:
            break
        w, value = trial, trial_value
        new_residual = residual_of(w)
        stalled = stalled + 1 if new_residual >= residual else 0
        residual = min(residual, new_residual)
        if residual <= 8 * EPS or stalled >= 3:
            break
    return w, residual_of(w), iterations


def nash_mtl(gramian: np.ndarray) -> Solved:
    """Nash-MTL's bargaining solution: G w = 1 / w, w > 0 (scale exponent -1/2).

    The residual is max_i |w_i (G w)_i - 1|. No solution exists when a loss has a zero gradient or,
    more generally, when some z >= 0, z != 0 has G z = 0: the residual then shows it.
    """
    g = as_array(gramian)
    s = unit_scale(g)
    w, residual, iterations = _power_fixed_point(g / s, 1.0)
    return Solved(w / math.sqrt(s), residual, {"iterations": iterations})


def fairgrad(gramian: np.ndarray, alpha: float) -> Solved:
    """FairGrad: G w = w^(-1/alpha), w > 0 (scale exponent -alpha / (1 + alpha))."""
    g = as_array(gramian)
    s = unit_scale(g)
    w, residual, iterations = _power_fixed_point(g / s, alpha)
    return Solved(w * s ** (-alpha / (1.0 + alpha)), residual, {"iterations": iterations})


# --- CAGrad ---------------------------------------------------------------------------------------


def cagrad(gramian: np.ndarray, c: float, preference: np.ndarray | None = None) -> Solved:
    """CAGrad: w = p + (rho / |g_w|) w*, w* = argmin_{w in simplex} <g_0, g_w> + rho |g_w|.

    g_0 = J^T p (p = 1/m each), rho = c |g_0|. The objective is convex; at its minimiser
    b + (rho / t) G w + mu 1 >= 0 with equality on the support (b = G p, t = |g_w|), which are the
    KKT conditions of min_{w in simplex} |g_w + s g_0|^2 with s = t / rho. So s solves
    t(s) = rho s, t(s) = |g_w(s)| for the exact min-norm weights w(s) of the shifted gradients
    g_i + s g_0; t(s) <= max_i |g_i|, so the root lies in [0, max_i |g_i| / rho]. The residual is
    the relative KKT violation of the convex problem at the result.
    """
    g = as_array(gramian)
    m = g.shape[0]
    p = np.full(m, 1.0 / m) if preference is None else np.asarray(preference, dtype=np.float64)
    gs = g / unit_scale(g)
    b = gs @ p
    g0_sq = float(p @ b)
    rho = c * math.sqrt(max(g0_sq, 0.0))
    if rho <= 0.0:  # c = 0 or g_0 = 0: the direction is g_0 itself
        return Solved(p.copy(), 0.0, {"note": "rho = 0: the mean direction"})
    ones = np.ones(m)

    def shifted(s: float) -> np.ndarray:
        return gs + s * (np.outer(b, ones) + np.outer(ones, b)) + s * s * g0_sq

    def solve(s: float) -> tuple[np.ndarray, float]:
        w = min_norm_weights(torch.from_numpy(shifted(s))).weights.numpy()
        return w, math.sqrt(max(float(w @ gs @ w), 0.0))

    exact: list[np.ndarray] = []

    def psi(s: float) -> float:
        w, t = solve(s)
        if not exact:  # try the closed form on this support: it ends the search when it holds
            found = _cagrad_on_support(gs, b, rho, w > 0)
            if found is not None:
                exact.append(found)
        return t - rho * s

    lo, hi = 0.0, math.sqrt(float(np.max(np.diag(gs)))) / rho * 1.000001 + 1e-300
    f_lo = psi(lo)
    f_hi = f_lo if exact else psi(hi)
    if f_lo <= 0.0 and not exact:
        # t(0) = 0: the gradients are Pareto-stationary. Where 0 is inside their hull, t(s) =
        # s |g_0| > rho s near 0 (c < 1), so the root still lies further right: look for it.
        for k in range(1, 60):
            f_lo = psi(hi * 0.5**k)
            if f_lo > 0.0:
                lo = hi * 0.5**k
                break
    if exact:
        s_star = math.nan
    elif f_lo <= 0.0:
        s_star = 0.0
    else:
        # Illinois (regula falsi) with bisection safeguards: the bracket always shrinks.
        side = 0
        s_star = hi
        for _ in range(_ROOT_MAX_ITER):
            s_new = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
            if not lo < s_new < hi:
                s_new = 0.5 * (lo + hi)
            value = psi(s_new)
            s_star = s_new
            if exact or value == 0.0 or hi - lo <= 4 * EPS * hi:
                break
            if value > 0:
                lo, f_lo = s_new, value
                if side == 1:
                    f_hi /= 2
                side = 1
            else:
                hi, f_hi = s_new, value
                if side == -1:
                    f_lo /= 2
                side = -1
    if exact:
        w_star = exact[0]
        t = math.sqrt(max(float(w_star @ gs @ w_star), 0.0))
    else:
        w_star, t = solve(s_star)
    if t <= 1e-12 * math.sqrt(float(np.max(np.diag(gs)))):
        # Pareto-stationary: the worst-case objective is minimised at g_w = 0, and CAGrad's
        # rescaling rho / |g_w| is undefined.
        return Solved(p.copy(), math.inf, {"note": "Pareto-stationary: CAGrad is undefined"})
    grad = b + rho * (gs @ w_star) / t
    residual = _simplex_kkt(grad, w_star) / max(float(np.abs(grad).max()), 1e-300)
    weights = p + (rho / t) * w_star
    return Solved(weights, residual, {"s": s_star})


def _cagrad_on_support(
    g: np.ndarray, b: np.ndarray, rho: float, support: np.ndarray
) -> np.ndarray | None:
    """Return CAGrad's minimiser w* if its support is `support` (checked), else None.

    On the support S, with t = |g_w| and H = G_SS nonsingular, the KKT conditions
    b_S + (rho / t) H w + mu 1 = 0, 1^T w = 1 give w = -(t / rho) H^-1 (b_S + mu 1), and
    t^2 = w^T H w turns into rho^2 = (b_S + mu 1)^T H^-1 (b_S + mu 1), a quadratic in mu; the root
    with t = -rho / (1^T H^-1 (b_S + mu 1)) > 0 gives w. It is the minimiser when w > 0 and every
    index off S has a nonnegative reduced gradient.
    """
    idx = np.where(support)[0]
    if idx.size == 0:
        return None
    h = g[np.ix_(idx, idx)]
    try:
        factor = np.linalg.cholesky(h)
    except np.linalg.LinAlgError:
        return None

    def inv(v: np.ndarray) -> np.ndarray:
        return np.linalg.solve(factor.T, np.linalg.solve(factor, v))

    ones = np.ones(idx.size)
    y, z = inv(ones), inv(b[idx])
    qa, qb, qc = float(ones @ y), float(ones @ z), float(b[idx] @ z) - rho * rho
    disc = qb * qb - qa * qc
    if not (qa > 0 and disc >= 0):
        return None
    for mu in ((-qb - math.sqrt(disc)) / qa, (-qb + math.sqrt(disc)) / qa):
        denominator = qb + mu * qa
        if denominator >= 0:
            continue
        t = -rho / denominator
        w = np.zeros(g.shape[0])
        w[idx] = -(t / rho) * (z + mu * y)
        if (w[idx] <= 0).any() or not np.isfinite(w).all():
            continue
        grad = b + (rho / t) * (g @ w)
        if _simplex_kkt(grad, w) <= 1e-12 * max(float(np.abs(grad).max()), 1e-300):
            return w
    return None


def _simplex_kkt(grad: np.ndarray, w: np.ndarray) -> float:
    """Return the KKT violation of w for min over the simplex with gradient `grad` at w."""
    support = w > 0
    mu = float(grad[support].mean()) if support.any() else float(grad.min())
    on = float(np.max(np.abs(grad[support] - mu), initial=0.0))
    off = float(np.max(mu - grad[~support], initial=0.0))
    return max(on, off)


# --- closed forms: IMTL-G, Aligned-MTL, PCGrad ------------------------------------------------


def _eigh(g: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Return (eigenvalues descending, eigenvectors, numerical rank: l > m eps l_max)."""
    lam, vec = np.linalg.eigh(g)
    order = np.argsort(lam)[::-1]
    lam, vec = lam[order], vec[:, order]
    top = float(lam[0]) if lam.size else 0.0
    rank = int((lam > top * g.shape[0] * EPS).sum()) if top > 0 else 0
    return lam, vec, rank


def imtl_g(gramian: np.ndarray) -> Solved:
    """IMTL-G: w proportional to G^+ n (n_i = |g_i|), sum w = 1: equal projections of d on every
    unit gradient, <d, g_i / |g_i|> = mu. Residual: max_i |(G w)_i - mu n_i| / (max_i G_ii |w|_1)
    with mu the least-squares fit; weights 0 (uncertified) when sum G^+ n is 0."""
    g = as_array(gramian)
    gs = g / unit_scale(g)
    n = np.sqrt(np.clip(np.diag(gs), 0.0, None))
    lam, vec, rank = _eigh(gs)
    if rank == 0:
        return Solved(np.zeros_like(n), math.inf, {"note": "every gradient is zero"})
    inv = vec[:, :rank] @ np.diag(1.0 / lam[:rank]) @ vec[:, :rank].T
    v = inv @ n
    total = float(v.sum())
    if abs(total) <= 1e-12 * float(np.abs(v).sum()):
        return Solved(np.zeros_like(n), math.inf, {"note": "sum of G^+ n is 0"})
    w = v / total
    gw = gs @ w
    mu = float(n @ gw) / float(n @ n)
    residual = float(np.max(np.abs(gw - mu * n))) / max(float(np.abs(w).sum()), 1e-300)
    return Solved(w, residual)


def aligned_mtl(gramian: np.ndarray, preference: np.ndarray | None = None) -> Solved:
    """Aligned-MTL: w = B p with B = sqrt(l_min) V L^(-1/2) V^T over the numerical range of G.

    B balances the gradients: B G B = l_min V V^T (equal singular values). The residual is
    max |B G B - l_min V V^T| / l_min.
    """
    g = as_array(gramian)
    m = g.shape[0]
    p = np.full(m, 1.0 / m) if preference is None else np.asarray(preference, dtype=np.float64)
    gs = g / unit_scale(g)
    lam, vec, rank = _eigh(gs)
    if rank == 0:
        return Solved(p.copy(), 0.0, {"note": "every gradient is zero: B = I"})
    lam_r, vec_r = lam[:rank], vec[:, :rank]
    smallest = float(lam_r[-1])
    b = math.sqrt(smallest) * vec_r @ np.diag(1.0 / np.sqrt(lam_r)) @ vec_r.T
    balanced = b @ gs @ b
    residual = float(np.max(np.abs(balanced - smallest * vec_r @ vec_r.T))) / smallest
    return Solved(b @ p, residual, {"rank": rank})


def pcgrad(gramian: np.ndarray, order: Callable[[int], list[list[int]]]) -> Solved:
    """PCGrad: each g_i has its conflicting components removed in turn, then all are summed.

    For loss i, a = e_i, then for j in `order(m)[i]` (j != i): if <g_a, g_j> = (G a)_j < 0,
    a_j -= (G a)_j / G_jj (projecting g_a onto the normal plane of g_j). w = sum_i a^(i).
    Details: `removed[i]` = |g_i - g_a^(i)| / |g_i|, the fraction of g_i's norm the projections
    removed; `conflicts` the losses k with (G w)_k < 0 (the sum still raises them to first order).
    The residual is the largest |<g_a, g_j>| / (|g_a| |g_j|) just after a projection (0 exactly).
    """
    g = as_array(gramian)
    m = g.shape[0]
    gs = g / unit_scale(g)
    permutations = order(m)
    w = np.zeros(m)
    removed = np.zeros(m)
    residual = 0.0
    for i in range(m):
        a = np.zeros(m)
        a[i] = 1.0
        for j in permutations[i]:
            if j == i:
                continue
            inner = float(gs[j] @ a)
            if inner < 0.0:
                a[j] -= inner / gs[j, j]
                after = float(gs[j] @ a)
                norm_a = math.sqrt(max(float(a @ gs @ a), 0.0))
                denom = max(norm_a * math.sqrt(gs[j, j]), 1e-300)
                residual = max(residual, abs(after) / denom)
        w += a
        diff = a.copy()
        diff[i] -= 1.0
        own = math.sqrt(max(float(gs[i, i]), 0.0))
        removed[i] = math.sqrt(max(float(diff @ gs @ diff), 0.0)) / own if own > 0 else 0.0
    gw = gs @ w
    tol = 1e-9 * float(np.max(np.diag(gs))) * float(np.abs(w).sum())
    conflicts = [k for k in range(m) if gw[k] < -tol]
    return Solved(w, residual, {"removed": removed.tolist(), "conflicts": conflicts})


def mgda(gramian: np.ndarray) -> Solved:
    """MGDA: the exact min-norm weights over the simplex (`min_norm_weights`), its KKT residual."""
    g = as_array(gramian)
    sol = min_norm_weights(torch.from_numpy(g))
    return Solved(sol.weights.numpy().copy(), sol.kkt_residual, {"unique": sol.unique})
