"""Scoring the selected formula on test, three ways.

* global: the program as selected, constants fitted on all training steps (what evolution found);
* calibrated: the same structure, constants refitted on each experiment's own training steps and
  scored on that experiment's test steps (as a simulator would deploy it per model and workload);
* leave-one-model-out: constants fitted on the training steps of every other model, scored on the
  held-out model's test steps (does the structure transfer to a model it has not seen?).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .fit import refit_constants
from .program import CheckedProgram, check_program


def features_of(frame: pd.DataFrame, names: Sequence[str]) -> dict[str, np.ndarray]:
    return {n: frame[n].to_numpy(dtype=float) for n in names}


def predict(program: CheckedProgram, frame: pd.DataFrame, names: Sequence[str],
            values: np.ndarray | None = None) -> np.ndarray:
    """The program's predictions for every row (constants as written, or `values`)."""
    run = program.compile_parametric()
    with np.errstate(all="ignore"):
        result = run(features_of(frame, names),
                     program.fittable_values if values is None else values)
    return np.broadcast_to(np.asarray(result, dtype=float), (len(frame),)).copy()


def _refit(program: CheckedProgram, frame: pd.DataFrame, target: str, names: Sequence[str],
           max_evaluations: int, max_rows: int) -> np.ndarray:
    if not program.fittable_values.size:
        return program.fittable_values
    fit = refit_constants(program, features_of(frame, names), frame[target].to_numpy(dtype=float),
                          max_evaluations=max_evaluations, max_rows=max_rows)
    return fit.values if fit.improved else program.fittable_values


def calibrated_predictions(code: str, train: pd.DataFrame, test: pd.DataFrame, target: str,
                           names: Sequence[str], max_evaluations: int, max_rows: int) -> np.ndarray:
    program = check_program(code, names)
    predicted = np.full(len(test), np.nan)
    for experiment in sorted(test["experiment"].unique()):
        rows = (test["experiment"] == experiment).to_numpy()
        values = _refit(program, train[train["experiment"] == experiment], target, names,
                        max_evaluations, max_rows)
        predicted[rows] = predict(program, test[rows], names, values)
    return predicted


def leave_one_model_out(code: str, train: pd.DataFrame, test: pd.DataFrame, target: str,
                        names: Sequence[str], max_evaluations: int,
                        max_rows: int) -> dict[str, np.ndarray]:
    """Predictions for each held-out model's test rows (model name -> array over its rows)."""
    program = check_program(code, names)
    held_out = {}
    for model in sorted(test["model"].unique()):
        others = train[train["model"] != model]
        if others.empty:
            continue
        values = _refit(program, others, target, names, max_evaluations, max_rows)
        held_out[model] = predict(program, test[test["model"] == model], names, values)
    return held_out
