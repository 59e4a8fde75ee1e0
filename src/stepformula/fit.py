"""Refitting a program's fittable constants to its training rows.

The rule. Three stages share one budget of program runs, all on the relative residuals
r = (pred - y) / y:

0. scale: every non-zero coefficient times one common factor 10^k, k on a half-decade grid
   (SCALE_GRID): a start that is off by orders of magnitude (a unit slip, a missing 1e6) lands
   near the right scale in a few runs;
1. scipy's Levenberg-Marquardt (`least_squares(method="lm")`: MINPACK, deterministic, no BLAS
   threads) on r, for up to LEAST_SQUARES_SHARE of the budget: Gauss-Newton is exact for
   coefficients that enter linearly;
2. LM on pseudo-Huber-transformed residuals sign(r) * sqrt(2 delta (sqrt(delta^2 + r^2) - delta)),
   delta = HUBER_DELTA: their sum of squares is ~r^2 for small errors (smooth, what LM needs)
   and ~2 delta |r| for large ones, so this stage minimises (nearly) MAPE itself, which relative
   least squares does not (outliers dominate it).
Each stage starts from the best point so far. (Chosen on real step rows and synthetic ones
against Huber-only and LS-then-Huber variants: the most robust to bad starts, never much worse.)

MAPE decides. Every evaluated point (Jacobian columns included) that is the best so far on the
optimiser's rows is scored by `metrics.mape` on ALL training rows, and the best point whose
prediction is valid on all rows (finite and > 0) is returned only if its MAPE is lower than the
starting constants'. So a refit never makes a program worse, and an invalid start can be rescued.
The optimiser is steered away from invalid predictions: a NaN/inf row gets residual 1e3, a row
<= 0 gets r - 20 (a jump, with r's slope kept so the optimiser knows which way is up).

Bounded work: at most `max_evaluations` program runs on the optimiser's rows (a counter stops
the optimiser: scipy's max_nfev does not count finite-difference runs for "lm"), plus one run on
all rows per new best point. The optimiser sees at most `max_rows` scored rows (every k-th,
deterministic); when its best point is invalid on rows it did not see, those rows are added and
the stage restarts (at most MAX_RESTARTS times).

Constants are moved multiplicatively, c = c0 * (1 + u) (u starts at 0; a zero start is moved
additively, c = u): programs mix constants like 1e6 and 1e-15, and a relative step suits both.
Only `coefficient` constants are fitted; exponents and comparison thresholds stay as written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from stepformula.metrics import mape as official_mape
from stepformula.metrics import scored_mask
from stepformula.program import CheckedProgram

HUBER_DELTA = 0.02
_QUANTUM = 2.0 ** 40
LEAST_SQUARES_SHARE = 0.3
SCALE_GRID = np.arange(-6.0, 6.01, 0.5)  # log10 of the common factor tried in stage 0
MAX_RESTARTS = 3
_NOT_FINITE_RESIDUAL = 1e3
_NOT_POSITIVE_STEP = 20.0
_RESIDUAL_BOUND = 1e8


@dataclass(frozen=True)
class FitResult:
    """Outcome of one refit: the values to use (the start values when nothing better was found)."""

    values: np.ndarray
    start_values: np.ndarray
    start_mape: float  # inf when the start prediction is invalid
    mape: float        # training MAPE of `values` on all rows (inf if invalid)
    evaluations: int   # program runs on the optimiser's rows
    improved: bool


def refit_constants(program: CheckedProgram, features: Mapping[str, np.ndarray], target: np.ndarray,
                    *, max_evaluations: int = 200, max_rows: int = 4000) -> FitResult:
    """Refit the fittable constants of `program` on (features, target) to lower training MAPE."""
    search = _Search(program, features, np.asarray(target, dtype=np.float64), max_evaluations, max_rows)
    search.run()
    return FitResult(search.best_values, search.start, search.start_mape, search.best_mape,
                     search.evaluations, bool(search.best_mape < search.start_mape))


def training_mape(program: CheckedProgram, features: Mapping[str, np.ndarray], target: np.ndarray,
                  values: np.ndarray) -> float:
    """MAPE by the project's metric with these constant values, or inf if the prediction is
    invalid (NaN, inf or <= 0 on any row) or raises."""
    try:
        with np.errstate(all="ignore"):
            predicted = np.broadcast_to(program.compile_parametric()(features, values), target.shape)
    except Exception:  # noqa: BLE001 - untrusted code
        return float("inf")
    if not (np.all(np.isfinite(predicted)) and np.all(predicted > 0)):
        return float("inf")
    value = official_mape(target, predicted)
    return value if np.isfinite(value) else float("inf")


class _BudgetSpent(Exception):
    """Raised inside the residual function to stop the optimiser at the stage's evaluation limit."""


class _Restart(Exception):
    """Raised when a promising point is invalid on rows the optimiser does not see."""

    def __init__(self, offending: np.ndarray):
        super().__init__()
        self.offending = offending


class _Search:
    """One refit: the optimiser's rows, the best point valid on ALL rows, the evaluations spent."""

    def __init__(self, program: CheckedProgram, features: Mapping[str, np.ndarray], target: np.ndarray,
                 max_evaluations: int, max_rows: int):
        self.program, self.features, self.target = program, features, target
        self.run_program = program.compile_parametric()
        self.max_evaluations = max(0, int(max_evaluations))
        self.start = program.fittable_values
        self.start_mape = training_mape(program, features, target, self.start)
        self.best_values, self.best_mape, self.best_u = self.start, self.start_mape, None
        self.evaluations = 0
        self.limit = 0
        self.restarts = 0
        self.best_here = np.inf  # best MAPE on the optimiser's rows within the current step
        self.zero_start = self.start == 0.0
        self._use_rows(_fit_rows(target, max_rows))

    def _use_rows(self, rows: np.ndarray) -> None:
        """Set the optimiser's rows (and the arrays derived from them, built once per row set)."""
        self.rows = rows
        self.row_features = {name: values[rows] for name, values in self.features.items()}
        self.y = self.target[rows]
        self.scored = scored_mask(self.y)  # rows added for validity may have unscored targets: residual 0
        self.inverse_y = np.where(self.scored, 1.0 / np.where(self.scored, self.y, 1.0), 0.0)
        self.seen_all_rows = rows.size == self.target.size

    def constants_from(self, u: np.ndarray) -> np.ndarray:
        return np.where(self.zero_start, u, self.start * (1.0 + u))

    def run(self) -> None:
        if self.start.size == 0 or self.max_evaluations == 0 or self.rows.size < self.start.size:
            return  # nothing to fit, no budget, or fewer rows than unknowns ("lm" needs m >= n)
        self.limit = self.max_evaluations
        self._guarded(self._scale_search)
        least_squares_end = min(self.max_evaluations,
                                self.evaluations + int(self.max_evaluations * LEAST_SQUARES_SHARE))
        for huber, limit in ((False, least_squares_end), (True, self.max_evaluations)):
            self.limit = limit
            # Each stage (and each restart) starts from the best point valid on all rows so far.
            self._guarded(lambda: self._least_squares(
                self.best_u if self.best_u is not None else np.zeros_like(self.start), huber))

    def _guarded(self, step) -> None:
        """Run a step; on a restart request, add the offending rows and run it again from there."""
        while True:
            try:
                step()
                return
            except _BudgetSpent:
                return
            except _Restart as again:
                self.restarts += 1
                self._use_rows(np.union1d(self.rows, again.offending))
            except (ValueError, np.linalg.LinAlgError):
                return  # the optimiser gave up; the best point seen so far still counts

    def _evaluate(self, u: np.ndarray) -> tuple[np.ndarray | None, bool, bool]:
        """(relative residuals, finite, positive) on the optimiser's rows; residuals None if it raised.
        A new best valid point on these rows is considered on all rows."""
        if self.evaluations >= self.limit:
            raise _BudgetSpent
        self.evaluations += 1
        constants = _quantized(self.constants_from(u))
        with np.errstate(all="ignore"):
            try:
                predicted = np.broadcast_to(self.run_program(self.row_features, constants), self.y.shape)
                relative = (predicted - self.y) * self.inverse_y
                finite, positive = np.isfinite(predicted), predicted > 0
            except Exception:  # noqa: BLE001 - a failure of untrusted code is an invalid point
                return None, np.False_, np.False_
            if finite.all() and positive.all():
                mape_here = float(np.mean(np.abs(relative[self.scored])))
                if mape_here < self.best_here:
                    self.best_here = mape_here
                    self._consider(u, constants)
        return relative, finite, positive

    def _scale_search(self) -> None:
        """Stage 0: one common factor 10^k on every non-zero coefficient, k on a half-decade grid.
        Cheap (SCALE_GRID points) and robust to starts that are off by orders of magnitude."""
        self.best_here = np.inf
        for exponent in SCALE_GRID:
            self._evaluate(np.where(self.zero_start, 0.0, 10.0 ** exponent - 1.0))

    def _least_squares(self, u0: np.ndarray, huber: bool) -> None:
        self.best_here = np.inf

        def residuals(u: np.ndarray) -> np.ndarray:
            relative, finite, positive = self._evaluate(u)
            if relative is None:
                return np.full(self.y.shape, _NOT_FINITE_RESIDUAL)
            with np.errstate(all="ignore"):
                if not (finite.all() and positive.all()):
                    relative = np.where(positive, relative, relative - _NOT_POSITIVE_STEP)
                    relative = np.where(finite, relative, _NOT_FINITE_RESIDUAL)
                # Bounded, so the optimiser's sum of squares cannot overflow (4000 rows * 1e16).
                relative = np.clip(relative, -_RESIDUAL_BOUND, _RESIDUAL_BOUND)
                if not huber:
                    return relative
                pseudo_huber = HUBER_DELTA * (np.sqrt(HUBER_DELTA * HUBER_DELTA + relative * relative)
                                              - HUBER_DELTA)
                return np.copysign(np.sqrt(2.0 * pseudo_huber), relative)

        with np.errstate(all="ignore"):
            least_squares(residuals, u0, method="lm", x_scale=1.0, max_nfev=self.max_evaluations)

    def _consider(self, u: np.ndarray, constants: np.ndarray) -> None:
        """Score a promising point on all rows; keep it if best, or restart if it fails unseen rows."""
        mape = training_mape(self.program, self.features, self.target, constants)
        if mape < self.best_mape:
            self.best_values, self.best_mape, self.best_u = constants.copy(), mape, u.copy()
        if not np.isfinite(mape) and not self.seen_all_rows and self.restarts < MAX_RESTARTS:
            offending = _invalid_rows(self.program, self.features, constants)
            if offending is not None and np.setdiff1d(offending, self.rows).size:
                raise _Restart(offending)


def _quantized(u: np.ndarray) -> np.ndarray:
    """Constants with their mantissas rounded to 40 bits before the program runs.

    MINPACK's proposals were seen to differ in their last bits between runs fed identical
    residuals (rarely, depending on the process's memory layout). Rounding what the program
    sees makes its runs, and so the whole fit, repeat exactly, while keeping a relative
    precision (~1e-12) far finer than MINPACK's finite-difference steps (~1e-8 relative).
    """
    mantissa, exponent = np.frexp(np.asarray(u, dtype=np.float64))
    return np.ldexp(np.round(mantissa * _QUANTUM) / _QUANTUM, exponent)


def _invalid_rows(program: CheckedProgram, features: Mapping[str, np.ndarray],
                  values: np.ndarray) -> np.ndarray | None:
    """Rows where the prediction is NaN, infinite or <= 0 (None if the program raises or is constant)."""
    try:
        with np.errstate(all="ignore"):
            predicted = np.asarray(program.compile_parametric()(features, values))
    except Exception:  # noqa: BLE001 - untrusted code
        return None
    if predicted.ndim == 0:
        return None
    return np.flatnonzero(~(np.isfinite(predicted) & (predicted > 0)))


def _fit_rows(target: np.ndarray, max_rows: int) -> np.ndarray:
    """The scored rows the optimiser starts with: all, or every k-th to stay within max_rows."""
    scored = np.flatnonzero(scored_mask(target))
    if scored.size <= max_rows:
        return scored
    stride = -(-scored.size // max_rows)
    return scored[::stride]
