"""Error measures and the regime of a step.

The zero/missing rule, used everywhere: a row whose target is missing (NaN) or not positive is
not scored; it is counted in `n_excluded`. A percentage error of a zero-time step is undefined,
and a negative time is not a time. Predictions are never masked: a NaN or infinite prediction
on a scored row makes every measure NaN, so it can never look like a good fit.
"""

from __future__ import annotations

import numpy as np

REGIMES = ("decode-dominated", "mixed", "prefill-dominated")
ZERO_RULE = ("rows whose target is missing or <= 0 are not scored (counted in n_excluded); "
             "predictions are never masked: a NaN or infinite prediction makes the score NaN")


def scored_mask(actual: np.ndarray) -> np.ndarray:
    """Rows that take part in scoring: finite, positive targets."""
    actual = np.asarray(actual, dtype=float)
    return np.isfinite(actual) & (actual > 0)


def _predictions(predicted: np.ndarray, shape: tuple) -> np.ndarray:
    """Predictions as floats of the targets' shape, an infinite one as NaN: otherwise an
    infinite prediction would give an infinite MAPE but a finite median (or p90) APE."""
    predicted = np.broadcast_to(np.asarray(predicted, dtype=float), shape)
    return np.where(np.isfinite(predicted), predicted, np.nan)


def abs_pct_errors(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """|pred - actual| / actual on scored rows, as fractions (0.25 is 25%)."""
    actual = np.asarray(actual, dtype=float)
    predicted = _predictions(predicted, actual.shape)
    mask = scored_mask(actual)
    return np.abs(predicted[mask] - actual[mask]) / actual[mask]


def error_summary(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """MAPE, median APE, p90 APE and WAPE as fractions, with the row counts."""
    actual = np.asarray(actual, dtype=float)
    predicted = _predictions(predicted, actual.shape)
    mask = scored_mask(actual)
    ape = abs_pct_errors(actual, predicted)
    n = int(mask.sum())
    if n == 0:
        nan = float("nan")
        return {"mape": nan, "median_ape": nan, "p90_ape": nan, "wape": nan,
                "n": 0, "n_excluded": int(actual.size)}
    abs_err = np.abs(predicted[mask] - actual[mask])
    return {
        "mape": float(np.mean(ape)),
        "median_ape": float(np.median(ape)),
        "p90_ape": float(np.quantile(ape, 0.9)),
        "wape": float(abs_err.sum() / actual[mask].sum()),
        "n": n,
        "n_excluded": int(actual.size - n),
    }


def mape(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Mean absolute percentage error as a fraction, on scored rows."""
    ape = abs_pct_errors(actual, predicted)
    return float(np.mean(ape)) if ape.size else float("nan")


def prefill_share(prefill_tokens: np.ndarray, scheduled_tokens: np.ndarray) -> np.ndarray:
    """Prefill tokens as a share of scheduled tokens; 0 for a step that scheduled nothing."""
    prefill = np.asarray(prefill_tokens, dtype=float)
    scheduled = np.asarray(scheduled_tokens, dtype=float)
    share = np.zeros_like(prefill)
    np.divide(prefill, scheduled, out=share, where=scheduled > 0)
    return share


def step_regime(prefill_tokens: np.ndarray, scheduled_tokens: np.ndarray,
                decode_below: float, prefill_at_least: float) -> np.ndarray:
    """Regime index per step (0, 1, 2 = REGIMES) from the prefill share of scheduled tokens.

    decode-dominated: share < decode_below; prefill-dominated: share >= prefill_at_least;
    mixed: in between. The thresholds are params (`regime:` in params.yaml).
    """
    if not 0.0 <= decode_below <= prefill_at_least <= 1.0:
        raise ValueError(
            f"regime thresholds must satisfy 0 <= decode_below <= prefill_at_least <= 1, "
            f"got {decode_below}, {prefill_at_least}")
    share = prefill_share(prefill_tokens, scheduled_tokens)
    regime = np.ones(share.shape, dtype=np.int8)
    regime[share < decode_below] = 0
    regime[share >= prefill_at_least] = 2
    return regime
