"""The metric's landscape at one scale: a Bayesian bowl over the governed hyperparameters.

Real training metrics are noisy (0.5-1% from run to run) and the optimum sits on a flat
plateau, so the single best trial says little about where the optimum is. raylaw models all
usable trials of a scale at once. In log coordinates x, the metric relative to the best trial
is a cubic bowl (lopsided: steeper towards divergence),

    y / y_best = c + b.x + 1/2 x'Ax + cubic(x) + level offsets + noise,

with Gaussian priors: the vertex near a law's prediction (mixed with a broad prior over the
box, so trials can overrule a wrong law; ``Bowl.doubt`` is the posterior weight of that), the
curvature and lopsidedness near those seen at other scales, and, where the trials form a grid,
an offset per shared value (runs with the same batch size see the same last batches, so their
final training losses move together). The noise sd is unknown: it is integrated over a grid,
with a declared value as its prior; without one, the prior is flat up to 2% and falls off above
it (a bowl that cannot fit a wall near divergence could call it noise). A bowl holds only near
its vertex, so each trial's variance grows with its gap above the best trial
(noise^2 + (misfit * gap)^2, misfit also on a grid); a trial more than OFF_GAP above the best
(divergence) counts as a bound the bowl must clear, and outliers are shrunk to ROBUST_CUT sds.
Every grid point's posterior is conjugate; draws of the vertex give the optimum's uncertainty
and Thompson-sampling proposals.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.spatial import Delaunay, QhullError

SIGMA_GRID = np.geomspace(2e-5, 0.3, 30)  # relative noise sd of the metric
# with no declared noise, the prior is flat up to this (training losses vary 0.1-2% from run to
# run) and falls off above it (log-sd NOISE_CEILING_SD): a bowl that cannot fit a wall near
# divergence would otherwise call it noise, and then no trial could contradict the law
NOISE_CEILING = 0.02
NOISE_CEILING_SD = 0.5
MISFIT_GRID = np.array([0.03, 0.1, 0.3])  # the bowl's misfit sd, per unit of gap
ROBUST_ITERATIONS = 4  # refits with each trial's gap from the previous fit
BROAD_WEIGHT = 0.15  # prior probability that the law's vertex prediction is wrong
DRAWS = 256  # vertex draws behind a posterior's mean and covariance
ROBUST_CUT = 3.0  # residuals beyond this many sds are shrunk to it (outlying trials)
OFF_BOWL = 5.0  # to start, trials more than this many median gaps above the best are off
OFF_GAP = 0.25  # trials 25% above the best are off the bowl (divergence, not a bowl's wall)
ON_BOWL = 4.0  # trials whose variance was inflated less than this fit the bowl
SUPPORT_GAP = 0.01  # ... counting trials within 1% of the best (the bowl's bottom) ...
SUPPORT_NOISES = 3.0  # ... or within this many noise sds, when the noise is larger
RECOMMEND_SDS = 1.0  # a recommendation must beat the surest trial by this many sds
DEGREE = 3  # cubic terms let the bowl be lopsided
CUBIC_SD = 1.0  # prior sd of cubic coefficients, in units of the bowl's own width
UNKNOWN_CURVATURE_SD = 30.0  # relative sd of the curvature prior when no scale has shown it
LEVEL_GRID = (0.0, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2)  # sd of shared-value offsets
OFFSET_SD = 1.0  # prior sd of a lower fidelity's offset (relative): nearly free
MIN_LEVELS = 4  # a grid dimension has at least this many values shared by several trials
GRID_SHARE = 4  # ... and this many trials per value on average


@dataclass(frozen=True)
class BowlPrior:
    """Prior knowledge about one scale's bowl, in warped coordinates.

    ``vertex``/``vertex_cov``: where the optimum is predicted (a law's prediction), or None for
    a flat prior. ``curvature``/``skew``: the second/third derivatives of the relative gap seen
    at other scales (or None), with their spreads. ``noise``: the metric's relative sd, or None.
    """

    vertex: np.ndarray | None = None
    vertex_cov: np.ndarray | None = None
    curvature: np.ndarray | None = None
    skew: np.ndarray | None = None  # third derivatives (d x d x d) seen at other scales
    curvature_sd: float = 0.7  # relative sd of the curvature around ``curvature``
    skew_sd: float = 0.5  # sd of the third derivatives around ``skew``, in the bowl's units
    noise: float | None = None
    noise_sd: float = 0.7  # log-sd of the noise prior: how sure ``noise`` is
    # covariance (d x d) of the law's budget exponents, by which a shorter run's coordinates
    # were moved (``fit_bowl``'s ``shift``): how far a lower fidelity's vertex may sit off
    transport_cov: np.ndarray | None = None


class Bowl:
    """A fitted bowl: the posterior of its coefficients, and what follows from it.

    Coordinates are the warped hyperparameters; values are relative to the best trial.
    ``center`` is the recommended optimum (the argmin of the posterior mean surface), ``draws``
    are posterior draws of the vertex (Thompson samples), ``curvature`` the posterior mean
    Hessian at the center (None if not convex) and ``noise`` the posterior mean noise sd.
    """

    def __init__(self, post: _Posterior, exps: np.ndarray, origin: np.ndarray,
                 low: np.ndarray, high: np.ndarray, n: int, seed: int | np.random.Generator):
        self._post, self._exps, self._origin = post, exps, origin
        self.low, self.high, self.n = low, high, n
        self._rng = np.random.default_rng(seed)
        self._draws: np.ndarray | None = None
        self.support: tuple[np.ndarray, np.ndarray] = (low, high)
        self.n_on = n  # trials that fit the bowl (not outliers, not bounds)
        self.tried = np.zeros((0, len(origin)))  # full-length trials that are not bounds
        self.on = np.zeros((0, len(origin)))  # their points
        t = len(exps)
        self._theta = post.mean()[:t]
        d = len(origin)
        wide = _widened(low, high, origin)  # a vertex past a hard bound is censored there
        x, ok = minimize(self._theta[None], exps, np.zeros((1, d)), *wide)
        x = x[0] if ok[0] else np.median(self.draws, axis=0) - origin
        self.unclipped = x + origin  # beyond a hard bound: the optimum is censored there
        self.center = np.clip(self.unclipped, low, high)
        _, hess = gradient_hessian(self.center[None] - origin, self._theta[None], exps)
        self.curvature = hess[0] if np.all(np.linalg.eigvalsh(hess[0]) > 0) else None
        self.skew = third_derivatives(self._theta, exps)
        self.noise = post.noise()
        self.typical_noise = post.typical_noise()
        # the posterior probability that the vertex prior (a law's prediction) is wrong
        self.doubt = float(post.weights @ post.broad)

    def draw(self, k: int = 1, rng: np.random.Generator | None = None) -> np.ndarray:
        """``k`` posterior draws of the vertex (k x d), inside the box widened a little (past a
        hard bound: the optimum is beyond it). Draws whose surface has no bowl there are
        redrawn: the metric is convex near its optimum."""
        rng = rng or self._rng
        lo, hi = _widened(self.low, self.high, self._origin)
        out: list[np.ndarray] = []
        for _ in range(8):
            theta = self._post.sample(rng, 2 * k)[:, :len(self._exps)]
            x, ok = minimize(theta, self._exps, np.zeros((2 * k, len(lo))), lo, hi)
            out.extend(x[ok])
            if len(out) >= k:
                break
        if len(out) < k:  # the posterior holds almost no bowl: spread over the box instead
            a = np.where(np.isfinite(lo), lo, np.minimum(hi, 0.0) - 1.0)
            b = np.where(np.isfinite(hi), hi, a + 2.0)
            out.extend(rng.uniform(a, b, (k - len(out), len(lo))))
        return np.array(out[:k]) + self._origin

    @property
    def draws(self) -> np.ndarray:
        if self._draws is None:
            self._draws = self.draw(DRAWS)
        return self._draws

    @property
    def cov(self) -> np.ndarray:
        return np.atleast_2d(np.cov(self.draws, rowvar=False))

    @property
    def sd(self) -> np.ndarray:
        return np.sqrt(np.diag(self.cov))

    def lowest_within(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """The recommended point inside [lo, hi] (and the hard box) and the convex hull of the
        trials on the bowl: of the posterior mean's low points there, the one whose improvement
        over the best-supported trial is largest once its uncertainty is subtracted (mean +
        RECOMMEND_SDS sd of the difference).

        A cubic's mean surface can have a local vertex where the prior put it and its lowest
        point elsewhere, and where no trial looked it is extrapolated; so Newton runs from the
        clipped center and from every trial on the bowl, and a point beats the trial the model
        is surest about only where the model is sure it is better. A corner of the trials' box
        can be far from every trial, so a low point outside their hull is moved back towards
        its start to the hull."""
        lo, hi = np.maximum(lo, self.low), np.minimum(hi, self.high)
        starts = np.clip(np.vstack([self.center[None], self.on]), lo, hi) - self._origin
        theta = np.repeat(self._theta[None], len(starts), axis=0)
        ends, _ = minimize(theta, self._exps, starts, lo - self._origin, hi - self._origin)
        if not len(self.on):
            points = np.vstack([ends, starts])
            return points[int(np.argmin(self.value(points + self._origin)))] + self._origin
        # within the trials' hull, not just their box: in a corner of the box no trial looked
        points = _into_hull(np.vstack([ends, starts]), np.vstack([starts, starts]),
                            self.on - self._origin) + self._origin
        return self.pick(points[:-len(self.on)], points[-len(self.on):])

    def pick(self, points: np.ndarray, trials: np.ndarray) -> np.ndarray:
        """Of ``points`` and ``trials`` (tried points), the one whose improvement over the trial
        the model is surest about is largest once its uncertainty is subtracted (mean +
        RECOMMEND_SDS sd of the difference): the answer leaves a trial only where the model is
        sure it is better. NaN points are never picked."""
        x = np.vstack([points, trials]) - self._origin
        draws = self._post.sample(self._rng, DRAWS)[:, :len(self._exps)]
        values = features(x, self._exps) @ draws.T  # points x draws
        tried = np.arange(len(points), len(x))
        ref = tried[int(np.argmin(values[tried].mean(axis=1)))]
        diff = values - values[ref]
        score = diff.mean(axis=1) + RECOMMEND_SDS * diff.std(axis=1)
        return x[int(np.argmin(np.where(np.isnan(score), np.inf, score)))] + self._origin

    def informative(self, points: np.ndarray, pending: np.ndarray | None = None) -> np.ndarray:
        """How much one more trial at each of ``points`` (m x d) is expected to lower the
        regret of the answer (relative units), after the trials at ``pending`` (running, their
        values unknown) have reported.

        The vertex is linearized in the coefficients (v = -H^-1 g), so its expected regret is
        1/2 tr(M C), M = G' H^-1 G, C the coefficients' covariance, and a trial at x with
        variance s^2 lowers it by 1/2 (c'Mc) / (s^2 + phi'C phi), c = C phi: averaged over the
        posterior's grid of noise and misfit, so a point far up the wall (where the bowl may
        not hold) buys less than its slope suggests."""
        post, exps, o = self._post, self._exps, self._origin
        t, d = len(exps), len(o)
        v = self.center[None] - o
        _, hess = gradient_hessian(v, self._theta[None], exps)
        maps = _derivative_maps(d, int(exps.sum(axis=1).max()))
        at_v = features(v, exps)[0]
        grad = np.einsum("jts,s->jt", maps, at_v)  # d(gradient)/d(coefficients)
        m = grad.T @ np.linalg.solve(_convex(hess)[0], grad)
        bottom = float(at_v @ self._theta)
        phi = features(np.atleast_2d(points) - o, exps)
        gap = np.maximum(phi @ self._theta - bottom, 0.0)
        wait = features(np.reshape([] if pending is None else pending, (-1, d)) - o, exps)
        wait_gap = np.maximum(wait @ self._theta - bottom, 0.0)
        out = np.zeros(len(phi))
        for w, prec, sig, mis in zip(post.weights, post.precs, post.sigmas, post.misfits):
            if w < 1e-4:
                continue
            cov = np.linalg.inv(prec)[:t, :t]
            for f, g in zip(wait, wait_gap):  # a running trial will have told this much
                c = cov @ f
                cov = cov - np.outer(c, c) / (sig**2 + misfit_sd(g, mis, sig) ** 2 + f @ c)
            c = phi @ cov
            s2 = sig**2 + misfit_sd(gap, mis, sig) ** 2
            out += w * 0.5 * np.einsum("ct,ts,cs->c", c, m, c) / (
                s2 + np.einsum("ct,ct->c", c, phi))
        return out

    def value(self, z: np.ndarray) -> np.ndarray:
        """Posterior mean of the relative metric at points z (m x d)."""
        return features(np.atleast_2d(z) - self._origin, self._exps) @ self._theta


def terms(d: int, degree: int = 3) -> np.ndarray:
    """Exponents (T x d) of every monomial in d variables up to ``degree``, constant first."""
    out = [np.zeros(d, dtype=int)]
    for deg in range(1, degree + 1):
        for combo in itertools.combinations_with_replacement(range(d), deg):
            e = np.zeros(d, dtype=int)
            for j in combo:
                e[j] += 1
            out.append(e)
    return np.array(out)


def third_derivatives(theta: np.ndarray, exps: np.ndarray) -> np.ndarray:
    """The (constant) third-derivative tensor of a cubic: the bowl's lopsidedness."""
    d = exps.shape[1]
    out = np.zeros((d, d, d))
    for t, e in enumerate(exps):
        if e.sum() == 3:
            value = theta[t] * math.prod(math.factorial(int(k)) for k in e)
            for idx in set(itertools.permutations(np.repeat(np.arange(d), e))):
                out[idx] = value
    return out


def features(x: np.ndarray, exps: np.ndarray) -> np.ndarray:
    """The monomials ``exps`` at points x (n x d): n x T."""
    return np.prod(x[:, None, :] ** exps[None, :, :], axis=2)


@functools.lru_cache(maxsize=32)
def _derivative_maps(d: int, degree: int) -> np.ndarray:
    """D (d x T x T): d/dx_j of monomial t is sum_s D[j, t, s] * monomial s."""
    exps = terms(d, degree)
    index = {tuple(e): s for s, e in enumerate(exps)}
    out = np.zeros((d, len(exps), len(exps)))
    for t, e in enumerate(exps):
        for j in range(d):
            if e[j]:
                lower = e.copy()
                lower[j] -= 1
                out[j, t, index[tuple(lower)]] = e[j]
    return out


def gradient_hessian(x: np.ndarray, theta: np.ndarray, exps: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Gradient (m x d) and Hessian (m x d x d) of polynomials ``theta`` (m x T) at x (m x d)."""
    d = x.shape[1]
    maps = _derivative_maps(d, int(exps.sum(axis=1).max()))
    mono = features(x, exps)  # m x T
    first = np.einsum("mt,jts->mjs", theta, maps)  # coefficients of each partial derivative
    g = np.einsum("mjs,ms->mj", first, mono)
    second = np.einsum("mjt,kts->mjks", first, maps)
    h = np.einsum("mjks,ms->mjk", second, mono)
    return g, h


def fit_bowl(z: np.ndarray, y: np.ndarray, low: np.ndarray, high: np.ndarray,
             prior: BowlPrior | None = None, seed: int | np.random.Generator = 0,
             group: np.ndarray | None = None, shift: np.ndarray | None = None) -> Bowl:
    """The bowl of metric ``y`` (minimized) over warped points ``z`` (n x d) in the box
    [low, high] (the hard bounds; infinite where there are none).

    ``group`` (n ints) marks trials measured at a lower fidelity (a rung where early stopping
    compared them): group 0 is full length; each other group gets an offset of its own (a
    shorter run ends higher) and its gaps are measured from its own best trial.

    ``shift`` (n floats, 0 at full length) is how far, in log budget, a shorter trial's
    coordinates were moved by the law's budget exponents. With ``prior.transport_cov`` (their
    covariance) the move is as unsure as the exponents: a shorter trial's vertex may sit
    ``shift * e`` off, e ~ N(0, transport_cov), one e for all fidelities. To first order that
    tilts their bowl by ``-shift * A e``: a slope per dimension, shared, scaled by ``shift``.
    """
    prior = prior or BowlPrior()
    z = np.asarray(z, dtype=float)
    y = np.asarray(y, dtype=float)
    n, d = z.shape
    group = np.zeros(n, dtype=int) if group is None else np.asarray(group, dtype=int)
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    rng = np.random.default_rng(seed)
    if n == 0:  # the prior alone (a study with no completed trial yet)
        z, y = np.zeros((1, d)), np.ones(1)
        origin = prior.vertex if prior.vertex is not None else _box_center(low, high)
        bowl = fit_bowl(z + origin, y, low, high, replace(prior, noise=1e3), rng)
        bowl.n = bowl.n_on = 0
        bowl.tried = np.zeros((0, d))
        return bowl
    full = group == 0
    best = int(np.argmin(np.where(full, y, np.inf))) if full.any() else int(np.argmin(y))
    scale = abs(y[best]) if y[best] != 0 else max(float(np.abs(y).max()), 1e-12)
    r = y / scale  # relative units: a gap of 0.01 is 1% above the best trial
    span = _span(z, low, high)
    origin = prior.vertex if prior.vertex is not None else _weighted_center(z[full], r[full])
    x = z - origin
    exps = terms(d, DEGREE)
    poly = features(x, exps)
    shorter = sorted(set(group.tolist()) - {0})
    offsets = np.column_stack([group == g for g in shorter]).astype(float) if shorter else (
        np.zeros((n, 0)))
    tilt, tilt_cov = np.zeros((n, 0)), None
    if (shorter and shift is not None and prior.transport_cov is not None
            and np.trace(prior.transport_cov) > 0):
        tilt = np.asarray(shift, dtype=float)[:, None] * x
        tilt_cov = _slope_cov(prior, span, np.asarray(prior.transport_cov, dtype=float))
    lev = levels(z) if not shorter else np.zeros((n, 0))  # grids have no rungs
    phi = np.hstack([poly, offsets, tilt, lev])
    # fidelity offsets are nearly free (a shorter run ends higher by any amount)
    components = _with_block(_coef_prior(exps, span, prior),
                             np.eye(len(shorter)) * OFFSET_SD**2 if shorter else None)
    components = _with_block(components, tilt_cov)
    components = _with_block(components, np.eye(lev.shape[1]) if lev.shape[1] else None,
                             LEVEL_GRID)
    log_sigma_prior = _noise_prior(prior.noise, prior.noise_sd)
    # how far above the best trial (of its fidelity) each one is: the bowl's misfit grows with
    # it (a gap to the model's own floor would let a misplaced vertex explain a slope away)
    floor = np.array([r[group == g].min() for g in group])
    gap = np.maximum(r - floor, 0.0)
    # a trial more than OFF_GAP above the best (divergence, not a bowl's wall) says only that
    # the metric there is at least that bad: a bound the bowl must clear (a Tobit step: it
    # counts as the larger of the bound and the bowl's own value there)
    off = gap > OFF_GAP
    cap = floor + OFF_GAP
    gap = np.minimum(gap, OFF_GAP)
    target = np.where(off, cap, r)
    # a trial far off the bowl counts as if it were ROBUST_CUT sds off; to start, so do
    # trials far above the typical gap
    inflate = np.maximum(1.0, (gap / (OFF_BOWL * max(float(np.median(gap)), 1e-9))) ** 2)
    for _ in range(ROBUST_ITERATIONS):
        post = _posterior(phi, target, gap, inflate, components, log_sigma_prior)
        fitted = phi @ post.mean()
        target = np.where(off, np.maximum(fitted, cap), r)
        noise = post.typical_noise()
        sd = np.sqrt(noise**2 + misfit_sd(gap, post.typical_misfit(), noise) ** 2)
        inflate = np.maximum(1.0, ((target - fitted) / (ROBUST_CUT * sd)) ** 2)
    bowl = Bowl(post, exps, origin, low, high, n, rng)
    fits = (inflate <= ON_BOWL) & ~off  # a bound (divergence) is not on the bowl
    bowl.n_on = int(fits.sum())
    bowl.tried = z[full & ~off]
    # where the bowl is known: trials that fit it near its bottom (a cubic holds only there);
    # beyond them the vertex is extrapolated
    near = fits & (gap <= max(SUPPORT_GAP, SUPPORT_NOISES * bowl.typical_noise))
    on = z[near]
    bowl.on = on
    if len(on):
        bowl.support = (on.min(axis=0), on.max(axis=0))
    return bowl


def minimize(theta: np.ndarray, exps: np.ndarray, start: np.ndarray, lo: np.ndarray,
             hi: np.ndarray, steps: int = 12, max_step: float = 1.0
             ) -> tuple[np.ndarray, np.ndarray]:
    """Local minima of polynomials ``theta`` (m x T) by damped Newton from ``start`` (m x d),
    each kept inside [lo, hi]: the vertex nearest the start when a cubic has several.
    Returns the points and whether each is a bowl's bottom (convex there)."""
    x = start.copy()
    for _ in range(steps):
        g, h = gradient_hessian(x, theta, exps)
        step = -np.linalg.solve(_convex(h), g[..., None])[..., 0]
        norm = np.linalg.norm(step, axis=1, keepdims=True)
        step *= np.minimum(1.0, max_step / np.maximum(norm, 1e-300))
        x = np.clip(x + step, lo, hi)
    _, h = gradient_hessian(x, theta, exps)
    return x, np.all(np.linalg.eigvalsh(h) > 0, axis=1)


# pieces -----------------------------------------------------------------------------------------
@dataclass
class _Posterior:
    """Gaussian posteriors of the coefficients, one per (prior component, noise) grid point."""

    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, p)
    precs: np.ndarray  # (K, p, p)
    sigmas: np.ndarray  # (K,)
    misfits: np.ndarray  # (K,)
    broad: np.ndarray  # (K,) bool: the grid point's vertex prior is the broad one

    def mean(self) -> np.ndarray:
        return self.weights @ self.means

    def noise(self) -> float:
        return float(self.weights @ self.sigmas)

    def typical_noise(self) -> float:
        """The geometric posterior mean of the noise sd (robust to the prior's long tail)."""
        return float(np.exp(self.weights @ np.log(self.sigmas)))

    def typical_misfit(self) -> float:
        return float(np.exp(self.weights @ np.log(self.misfits)))

    def sample(self, rng: np.random.Generator, k: int) -> np.ndarray:
        idx = rng.choice(len(self.weights), size=k, p=self.weights)
        out = np.empty((k, self.means.shape[1]))
        for j in np.unique(idx):
            sel = idx == j
            chol = np.linalg.cholesky(self.precs[j])
            eps = rng.standard_normal((int(sel.sum()), self.means.shape[1]))
            out[sel] = self.means[j] + np.linalg.solve(chol.T, eps.T).T
        return out


def _posterior(phi: np.ndarray, r: np.ndarray, gap: np.ndarray, inflate: np.ndarray,
               components: list[tuple[np.ndarray, np.ndarray, float, bool]],
               log_sigma_prior: np.ndarray) -> _Posterior:
    """Posterior over (prior component, noise sigma): conjugate for each grid point.

    A trial's variance is noise^2 + (misfit * gap)^2, times its robustness ``inflate``; noise
    and misfit run over SIGMA_GRID x MISFIT_GRID.
    """
    sig = np.repeat(SIGMA_GRID, len(MISFIT_GRID))
    mis = np.tile(MISFIT_GRID, len(SIGMA_GRID))
    var = (sig[:, None] ** 2 + misfit_sd(gap[None, :], mis[:, None], sig[:, None]) ** 2
           ) * inflate[None, :]
    log_sigma_prior = np.repeat(log_sigma_prior, len(MISFIT_GRID))
    w = 1.0 / var
    info = np.einsum("sn,np,nq->spq", w, phi, phi)  # (S, p, p)
    xty = (w * r[None, :]) @ phi  # (S, p)
    logdet_v = np.log(var).sum(axis=1)
    weights, means, precs, sigmas, misfits = [], [], [], [], []
    broads = []
    for mu0, prec0, log_mix, broad in components:
        prec = info + prec0[None]
        rhs = xty + (prec0 @ mu0)[None]
        mean = np.linalg.solve(prec, rhs[..., None])[..., 0]
        resid = r[None, :] - mean @ phi.T
        dev = mean - mu0[None]
        quad = (w * resid**2).sum(axis=1) + np.einsum("sp,pq,sq->s", dev, prec0, dev)
        logdet_p = np.linalg.slogdet(prec)[1]
        logml = -0.5 * (logdet_v + quad + logdet_p - _logdet_proper(prec0))
        weights.append(logml + log_sigma_prior + log_mix)
        means.append(mean)
        precs.append(prec)
        sigmas.append(sig)
        misfits.append(mis)
        broads.append(np.full(len(sig), broad))
    logw = np.concatenate(weights)
    wts = np.exp(logw - logw.max())
    wts /= wts.sum()
    keep = wts > 1e-10
    return _Posterior(wts[keep] / wts[keep].sum(), np.concatenate(means)[keep],
                      np.concatenate(precs)[keep], np.concatenate(sigmas)[keep],
                      np.concatenate(misfits)[keep], np.concatenate(broads)[keep])


def _with_block(components: list[tuple[np.ndarray, np.ndarray, float, bool]],
                cov: np.ndarray | None, scales: Sequence[float] = (1.0,)
                ) -> list[tuple[np.ndarray, np.ndarray, float, bool]]:
    """Each component extended by coefficients ~ N(0, k^2 cov), one copy per k of ``scales``
    (equally likely a priori; the posterior weighs them by evidence). None: no coefficients."""
    if cov is None:
        return components
    n = len(cov)
    jitter = 1e-6 * float(np.trace(cov)) / n * np.eye(n)  # a direction it fixes: nearly 0
    out = []
    blocks = [np.linalg.inv(max(k, 1e-6) ** 2 * (cov + jitter)) for k in scales]
    for mu0, prec0, log_mix, broad in components:
        p = len(mu0)
        for block in blocks:
            prec = np.zeros((p + n, p + n))
            prec[:p, :p] = prec0
            prec[p:, p:] = block
            out.append((np.concatenate([mu0, np.zeros(n)]), prec,
                        log_mix - math.log(len(scales)), broad))
    return out


def levels(z: np.ndarray) -> np.ndarray:
    """Indicators (n x L) of the values of each dimension that several trials share, where a
    dimension is a grid: at least MIN_LEVELS values, each shared by GRID_SHARE trials on
    average (a search's integer values repeat too, but they are no grid)."""
    cols = []
    for j in range(z.shape[1]):
        vals, inv, counts = np.unique(np.round(z[:, j], 9), return_inverse=True,
                                      return_counts=True)
        shared = np.flatnonzero(counts >= 2)
        if len(shared) >= MIN_LEVELS and len(z) >= GRID_SHARE * len(vals):
            cols += [(inv == v).astype(float) for v in shared]
    return np.column_stack(cols) if cols else np.zeros((len(z), 0))


def misfit_sd(gap: np.ndarray, scale: np.ndarray | float, noise: np.ndarray | float
              ) -> np.ndarray:
    """The bowl's misfit sd at a trial ``gap`` above the best one: ``scale`` times the part of
    the gap the noise cannot explain (near the vertex, gaps are mostly noise)."""
    return scale * np.maximum(gap - 2 * noise, 0.0)


def _logdet_proper(prec: np.ndarray) -> float:
    ev = np.linalg.eigvalsh(prec)
    ev = ev[ev > 1e-12 * max(ev.max(), 1e-300)]
    return float(np.log(ev).sum())


def _coef_prior(exps: np.ndarray, span: np.ndarray, prior: BowlPrior
                ) -> list[tuple[np.ndarray, np.ndarray, float, bool]]:
    """Prior mean, precision and log weight of the coefficients, per mixture component, and
    whether the component is the broad one (the vertex anywhere in the box).

    The constant is flat. The curvature A (twice the square terms, once the cross terms):
    near ``prior.curvature`` (relative sd ``prior.curvature_sd``) if given, else barely tied to
    a bowl that rises 4% over a fifth of the box (proper, so a few trials still give a vertex).
    The
    linear part b = -A v follows from the vertex prior: the law's prediction (covariance
    A S A), mixed with a broad one over the box. Cubic terms (the bowl is lopsided: steeper
    towards divergence) are centred on ``prior.skew`` (sd ``prior.skew_sd``) or on 0 (sd
    CUBIC_SD), in the bowl's own units.
    """
    known = prior.curvature is not None
    h0 = _curvature0(prior, span)
    diag = np.diag(h0)
    deg = exps.sum(axis=1)
    p = len(exps)
    mu = np.zeros(p)
    sd = np.full(p, np.inf)
    lin = [t for t in range(p) if deg[t] == 1]
    for t in range(p):
        e = exps[t]
        if deg[t] == 2:
            j, k = np.flatnonzero(e)[0], np.flatnonzero(e)[-1]
            factor = 0.5 if j == k else 1.0
            mu[t] = factor * h0[j, k]
            spread = prior.curvature_sd if known else UNKNOWN_CURVATURE_SD
            sd[t] = factor * math.sqrt(diag[j] * diag[k]) * spread
        elif deg[t] == 3:
            unit = float(np.prod(np.sqrt(diag) ** e))
            if prior.skew is not None:  # seen at other scales: the bowl keeps its lopsidedness
                idx = tuple(np.repeat(np.arange(len(e)), e))
                mu[t] = prior.skew[idx] / math.prod(math.factorial(int(k)) for k in e)
                sd[t] = prior.skew_sd * unit
            else:
                sd[t] = CUBIC_SD * unit * (1.0 if known else UNKNOWN_CURVATURE_SD)
    broad = np.diag((span / 2) ** 2)
    if prior.vertex is not None and prior.vertex_cov is not None:
        vertex_covs = [np.asarray(prior.vertex_cov, dtype=float), broad]
        log_mix = np.log([1 - BROAD_WEIGHT, BROAD_WEIGHT])
    else:
        vertex_covs, log_mix = [broad], np.zeros(1)
    mus, precs = [], []
    for s in vertex_covs:
        cov = np.diag(np.where(np.isfinite(sd), sd, 0.0) ** 2)
        cov[np.ix_(lin, lin)] = _slope_cov(prior, span, s)
        proper = [t for t in range(p) if deg[t] > 0]
        prec = np.zeros((p, p))
        prec[np.ix_(proper, proper)] = np.linalg.inv(cov[np.ix_(proper, proper)])
        mus.append(mu.copy())
        precs.append(prec)
    kinds = [False, True] if len(vertex_covs) == 2 else [False]
    return list(zip(mus, precs, log_mix, kinds))


def _curvature0(prior: BowlPrior, span: np.ndarray) -> np.ndarray:
    """The prior's curvature (Hessian) of the bowl: seen at other scales, else a bowl that
    rises 4% over a fifth of the box."""
    if prior.curvature is not None:
        return np.asarray(prior.curvature, dtype=float)
    return np.diag(0.04 / (0.2 * span) ** 2)


def _slope_cov(prior: BowlPrior, span: np.ndarray, vertex_cov: np.ndarray) -> np.ndarray:
    """Covariance of the bowl's slope b = -A v when its vertex v moves with ``vertex_cov``:
    A S A, widened by how unsure the curvature A itself is."""
    h0 = _curvature0(prior, span)
    spread = prior.curvature_sd if prior.curvature is not None else 1.0
    return h0 @ vertex_cov @ h0.T * (1 + spread**2)


def _noise_prior(noise: float | None, sd: float) -> np.ndarray:
    """Log prior weights of SIGMA_GRID: log-normal around a known noise; else log-uniform up to
    NOISE_CEILING and a half log-normal above it."""
    logs = np.log(SIGMA_GRID)
    if noise is None or not noise > 0:
        return -0.5 * (np.maximum(logs - math.log(NOISE_CEILING), 0.0) / NOISE_CEILING_SD) ** 2
    return -0.5 * ((logs - math.log(noise)) / sd) ** 2


def _span(z: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Per dimension, the box's width, or (unbounded) four times the trials' spread."""
    width = high - low
    fallback = 4 * np.maximum(z.std(axis=0), 0.5) if len(z) else np.ones(len(low))
    return np.where(np.isfinite(width) & (width > 0), width, fallback)


def _widened(low: np.ndarray, high: np.ndarray, origin: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """The box [low, high] widened by a quarter of its width on each side, relative to
    ``origin``: where a vertex may lie (past a bound, censored), a cubic not running off."""
    width = np.where(np.isfinite(high - low), high - low, 0.0)
    return low - 0.25 * width - origin, high + 0.25 * width - origin


def _box_center(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    both = np.isfinite(low) & np.isfinite(high)
    return np.where(both, (low + high) / 2, np.where(np.isfinite(low), low,
                                                     np.where(np.isfinite(high), high, 0.0)))


def _weighted_center(z: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Centroid of the best trials (coordinates' origin when there is no vertex prior)."""
    k = min(len(r), max(3, 2 * z.shape[1] + 1))
    idx = np.argsort(r)[:k]
    return z[idx].mean(axis=0)


def _into_hull(ends: np.ndarray, starts: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """``ends`` moved back towards their ``starts`` to the convex hull of ``pts`` where they
    lie outside it; NaN where the start is outside too. Unchanged where the hull has no
    interior (fewer trials than dimensions + 1, or all on a line): the box is all there is."""
    try:
        hull = Delaunay(pts)
    except (QhullError, ValueError):
        return ends
    inside = hull.find_simplex(ends, tol=1e-9) >= 0
    ok = hull.find_simplex(starts, tol=1e-9) >= 0
    lo, hi = np.zeros(len(ends)), np.ones(len(ends))
    for _ in range(20):  # bisect each segment start -> end for its last point in the hull
        mid = (lo + hi) / 2
        within = hull.find_simplex(starts + mid[:, None] * (ends - starts), tol=1e-9) >= 0
        lo, hi = np.where(within, mid, lo), np.where(within, hi, mid)
    moved = np.where(ok[:, None], starts + lo[:, None] * (ends - starts), np.nan)
    return np.where(inside[:, None], ends, moved)


def _convex(h: np.ndarray) -> np.ndarray:
    """Hessians (..., d, d) with eigenvalues floored at a small fraction of the largest."""
    ev, vec = np.linalg.eigh(h)
    top = np.maximum(np.abs(ev).max(axis=-1, keepdims=True), 1e-12)
    ev = np.maximum(ev, 1e-3 * top)
    return (vec * ev[..., None, :]) @ np.swapaxes(vec, -1, -2)
