"""The temporal split: int(n*0.6) / int(n*0.8) boundaries by step id, per experiment, per target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stepformula import features, splits, traces
from stepformula.errors import InputError
from stepformula.facts import load_facts

REPO = Path(__file__).resolve().parents[1]
RAW = REPO / "data" / "raw" / "enriched_steps_3exp.parquet"
FACTS = REPO / "data" / "models.yaml"


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    facts = load_facts(FACTS, "H100-SXM-80GB")
    return features.build_features(traces.read_all([RAW]), facts, 16)


@pytest.fixture(scope="module")
def parts(rows) -> dict:
    return {target: splits.temporal_split(rows, target, 0.6, 0.2) for target in features.TARGETS}


def hand_rows(counts: dict[str, int], seed: int = 0) -> pd.DataFrame:
    """Rows of several experiments, step ids shuffled, a target with some NaNs."""
    rng = np.random.default_rng(seed)
    frames = []
    for experiment, n in counts.items():
        ids = rng.permutation(np.arange(1, 10 * n, 10))[:n]
        frames.append(pd.DataFrame({"experiment": experiment, "step_id": ids,
                                    "y": rng.uniform(1, 2, n)}))
    return pd.concat(frames, ignore_index=True).sample(frac=1, random_state=seed)


@pytest.mark.parametrize("n, sizes", [(10, (6, 2, 2)), (7, (4, 1, 2)), (20, (12, 4, 4)),
                                      (13, (7, 3, 3)), (5, (3, 1, 1))])
def test_boundaries_on_hand_rows(n, sizes):
    frame = hand_rows({"e1": n, "e2": 2 * n})
    assert splits.split_bounds(n, 0.6, 0.2) == (sizes[0], sizes[0] + sizes[1])
    got = splits.temporal_split(frame, "y", 0.6, 0.2)
    one = {p: got[p][got[p]["experiment"] == "e1"] for p in splits.PARTS}
    assert tuple(len(one[p]) for p in splits.PARTS) == sizes
    ids = np.sort(frame.loc[frame["experiment"] == "e1", "step_id"].to_numpy())
    assert one["train"]["step_id"].tolist() == ids[:sizes[0]].tolist()
    assert one["valid"]["step_id"].tolist() == ids[sizes[0]:sizes[0] + sizes[1]].tolist()
    assert one["test"]["step_id"].tolist() == ids[sizes[0] + sizes[1]:].tolist()


def test_rows_without_the_target_are_left_out():
    frame = hand_rows({"e1": 30})
    frame.loc[frame["step_id"] % 20 == 1, "y"] = np.nan  # every other row
    labelled = int(frame["y"].notna().sum())
    assert labelled == 15
    got = splits.temporal_split(frame, "y", 0.6, 0.2)
    assert [len(got[p]) for p in splits.PARTS] == [9, 3, 3]
    assert all(got[p]["y"].notna().all() for p in splits.PARTS)


def test_shipped_boundaries_per_experiment_and_target(rows, parts):
    for target, by_part in parts.items():
        labelled = rows[rows[target].notna()]
        for experiment, group in labelled.groupby("experiment"):
            n = len(group)
            a, b = int(n * 0.6), int(n * 0.8)
            got = {p: by_part[p][by_part[p]["experiment"] == experiment] for p in splits.PARTS}
            assert [len(got[p]) for p in splits.PARTS] == [a, b - a, n - b], (target, experiment)
            ids = np.sort(group["step_id"].to_numpy())
            assert set(got["train"]["step_id"]) == set(ids[:a])
            assert set(got["valid"]["step_id"]) == set(ids[a:b])
            assert set(got["test"]["step_id"]) == set(ids[b:])
    # period_us gets its own 60/20/20 of its own ~10% of the rows
    assert sum(len(f) for f in parts["period_us"].values()) == 1_967
    assert sum(len(f) for f in parts["duration_us"].values()) == 20_112
    assert len(parts["duration_us"]["test"]) == 1199 + 1336 + 1489


def test_temporal_order_within_each_experiment(parts):
    for target, by_part in parts.items():
        for experiment in by_part["train"]["experiment"].unique():
            ids = {p: by_part[p].loc[by_part[p]["experiment"] == experiment, "step_id"]
                   for p in splits.PARTS}
            assert ids["train"].max() < ids["valid"].min(), (target, experiment)
            assert ids["valid"].max() < ids["test"].min(), (target, experiment)
            for p in splits.PARTS:
                assert ids[p].is_monotonic_increasing, (target, experiment, p)


def test_parts_are_disjoint_and_keep_all_columns(rows, parts):
    for target, by_part in parts.items():
        keys = pd.concat([by_part[p][["experiment", "step_id"]] for p in splits.PARTS])
        assert not keys.duplicated().any()
        for p in splits.PARTS:
            assert list(by_part[p].columns) == list(rows.columns)
            assert by_part[p][target].notna().all()


@pytest.mark.parametrize("train, valid", [(0.0, 0.2), (1.0, 0.2), (0.6, 0.4), (0.7, 0.5),
                                          (-0.1, 0.2), (0.6, 0.0), (0.6, -0.2), (1.5, 0.2)])
def test_bad_fractions_raise(train, valid):
    frame = hand_rows({"e1": 50})
    with pytest.raises(InputError, match="train_fraction and valid_fraction") as info:
        splits.temporal_split(frame, "y", train, valid)
    assert "split" in info.value.source


def test_unknown_target_and_too_few_rows_raise():
    frame = hand_rows({"e1": 50, "tiny": 2})
    with pytest.raises(InputError, match="no target column 'z'"):
        splits.temporal_split(frame, "z", 0.6, 0.2)
    with pytest.raises(InputError, match="tiny has only 2 rows"):
        splits.temporal_split(frame, "y", 0.6, 0.2)
