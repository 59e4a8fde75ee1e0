"""The three baselines (and a black-box reference) the evolved formula must beat.

* blackbox: b0 + b1*prefill_tokens + b2*decode_tokens by ordinary least squares, per experiment
  (one fit per experiment, as the BLIS study does) and global (one fit for all experiments);
* ridge: scikit-learn Ridge on the engineered set (engineered.py), standardised, per experiment
  and global;
* roofline: the raw analytical decomposition (roofline.py), nothing fitted;
* hgb: scikit-learn HistGradientBoosting on the raw features with a log target, global: what the
  same features give a black box with no op budget.

Fitting reads train only; `predict` is then applied to any split by whoever scores it. Fitting is
deterministic (fixed random_state, no early stopping), so fitting again gives the same models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .engineered import ALL_COLUMNS, RAW, engineered_features
from .errors import InputError
from .facts import Facts
from .metrics import error_summary
from .roofline import roofline_us

BLACKBOX_FEATURES = ["prefill_tokens", "decode_tokens"]
BASELINES = ("blackbox_per_experiment", "blackbox_global", "ridge_per_experiment",
             "ridge_global", "roofline", "hgb_global")


@dataclass
class FittedBaselines:
    """Every baseline fitted on one target's train split."""
    target: str
    facts: Facts
    blackbox: dict[str, LinearRegression] = field(default_factory=dict)  # experiment or "global"
    ridge: dict[str, object] = field(default_factory=dict)
    hgb: HistGradientBoostingRegressor | None = None

    def predict(self, name: str, frame: pd.DataFrame) -> np.ndarray:
        """Predictions (µs) of baseline `name` for every row of `frame`."""
        if name == "roofline":
            return roofline_us(frame, self.facts)
        if name == "hgb_global":
            return np.exp(self.hgb.predict(frame[RAW].to_numpy(dtype=float)))
        models, columns = {"blackbox": (self.blackbox, None), "ridge": (self.ridge, ALL_COLUMNS)
                           }[name.split("_")[0]]
        X = (frame[BLACKBOX_FEATURES] if columns is None else engineered_features(frame)[columns]
             ).to_numpy(dtype=float)
        if name.endswith("_global"):
            return models["global"].predict(X)
        predicted = np.full(len(frame), np.nan)
        experiments = frame["experiment"].to_numpy()
        for experiment in np.unique(experiments):
            if experiment not in models:
                raise InputError(experiment, f"{name}: no fit for this experiment in train")
            rows = experiments == experiment
            predicted[rows] = models[experiment].predict(X[rows])
        return predicted


def fit_baselines(train: pd.DataFrame, target: str, facts: Facts, ridge_alpha: float,
                  hgb_max_iter: int, seed: int) -> FittedBaselines:
    """Fit every baseline on `train` rows whose target is scoreable (finite, > 0)."""
    y_all = train[target].to_numpy(dtype=float)
    train = train[np.isfinite(y_all) & (y_all > 0)]
    y = train[target].to_numpy(dtype=float)
    fitted = FittedBaselines(target=target, facts=facts)
    X_blackbox = train[BLACKBOX_FEATURES].to_numpy(dtype=float)
    X_ridge = engineered_features(train)[ALL_COLUMNS].to_numpy(dtype=float)
    groups = {"global": np.ones(len(train), dtype=bool)}
    groups.update({e: (train["experiment"] == e).to_numpy() for e in sorted(train["experiment"].unique())})
    for group, rows in groups.items():
        fitted.blackbox[group] = LinearRegression().fit(X_blackbox[rows], y[rows])
        fitted.ridge[group] = make_pipeline(StandardScaler(), Ridge(alpha=ridge_alpha)).fit(
            X_ridge[rows], y[rows])
    fitted.hgb = HistGradientBoostingRegressor(max_iter=hgb_max_iter, early_stopping=False,
                                               random_state=seed).fit(
        train[RAW].to_numpy(dtype=float), np.log(y))
    return fitted


def score(actual: np.ndarray, predicted: np.ndarray, experiments: np.ndarray) -> dict:
    """Per-experiment error summaries, their mean over experiments, and the pooled summary."""
    per_experiment = {str(e): error_summary(actual[experiments == e], predicted[experiments == e])
                      for e in np.unique(experiments)}
    keys = ("mape", "median_ape", "p90_ape", "wape")
    mean = {k: float(np.mean([s[k] for s in per_experiment.values()])) for k in keys}
    return {"experiments": per_experiment, "mean_over_experiments": mean,
            "pooled": error_summary(actual, predicted)}


def score_baselines(fitted: FittedBaselines, frame: pd.DataFrame) -> dict[str, dict]:
    """Every baseline scored on `frame` (a valid or test split of the fitted target)."""
    actual = frame[fitted.target].to_numpy(dtype=float)
    experiments = frame["experiment"].to_numpy()
    return {name: score(actual, fitted.predict(name, frame), experiments) for name in BASELINES}


def blackbox_coefficients(fitted: FittedBaselines) -> dict[str, dict[str, float]]:
    """b0, b1, b2 of every blackbox fit, for the report and the seed program."""
    return {group: {"b0": float(m.intercept_), "b1_prefill": float(m.coef_[0]),
                    "b2_decode": float(m.coef_[1])} for group, m in fitted.blackbox.items()}
