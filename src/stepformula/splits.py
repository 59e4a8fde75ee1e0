"""The temporal split: first 60% of an experiment's steps train, next 20% validate, last 20% test.

Per experiment and per target: a target's split holds only rows where that target exists, so
period_us (about a tenth of the rows) gets its own 60/20/20 of its own rows. Boundaries are
`int(n * 0.6)` and `int(n * 0.8)` by step id, which is the BLIS study's rule: with it the
study's published blackbox test MAPEs are reproduced to 0.01 pp.
"""

from __future__ import annotations

import pandas as pd

from .errors import InputError

PARTS = ("train", "valid", "test")


def split_bounds(n: int, train_fraction: float, valid_fraction: float) -> tuple[int, int]:
    """Row counts where valid and test start, for n rows in step-id order."""
    return int(n * train_fraction), int(n * (train_fraction + valid_fraction))


def temporal_split(rows: pd.DataFrame, target: str, train_fraction: float,
                   valid_fraction: float) -> dict[str, pd.DataFrame]:
    """Split the rows that have `target` into train/valid/test, inside each experiment."""
    if not (0 < train_fraction < 1 and 0 < valid_fraction < 1
            and train_fraction + valid_fraction < 1):
        raise InputError("params.yaml split", "train_fraction and valid_fraction must be in "
                         f"(0, 1) and sum below 1, got {train_fraction}, {valid_fraction}")
    if target not in rows.columns:
        raise InputError("features", f"no target column {target!r}")
    parts: dict[str, list[pd.DataFrame]] = {p: [] for p in PARTS}
    labelled = rows[rows[target].notna()]
    for experiment, group in labelled.groupby("experiment", sort=True):
        group = group.sort_values("step_id")
        a, b = split_bounds(len(group), train_fraction, valid_fraction)
        if a == 0 or b == a or b == len(group):
            raise InputError("features", f"experiment {experiment} has only {len(group)} rows "
                             f"with {target}: too few for a {train_fraction}/{valid_fraction} split")
        parts["train"].append(group.iloc[:a])
        parts["valid"].append(group.iloc[a:b])
        parts["test"].append(group.iloc[b:])
    return {p: pd.concat(frames, ignore_index=True) for p, frames in parts.items()}
