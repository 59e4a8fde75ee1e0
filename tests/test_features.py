"""features.build_features and the manifest: period_us, KV features, TP aggregation, and the
manifest's account of all 18 features and both targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stepformula import features, traces
from stepformula.facts import load_facts

REPO = Path(__file__).resolve().parents[1]
RAW = REPO / "data" / "raw" / "enriched_steps_3exp.parquet"
FACTS = REPO / "data" / "models.yaml"
LLAMA = "20260101-000000-llama-2-70b-tp4-general"
CODE = "20260101-000000-codellama-34b-tp2-general"


@pytest.fixture(scope="module")
def facts():
    return load_facts(FACTS, "H100-SXM-80GB")


@pytest.fixture(scope="module")
def shipped(facts) -> pd.DataFrame:
    steps = traces.read_all([RAW])
    return features.build_features(steps, facts, 16)


def canonical(experiment: str, model: str, tp: int, ids: list[int], starts_ms: list[float],
              **columns) -> pd.DataFrame:
    """Hand-made canonical step rows (the readers' output layout)."""
    n = len(ids)
    rows = {"experiment": [experiment] * n, "model": [model] * n, "workload": ["general"] * n,
            "tp": [tp] * n, "step_id": ids,
            "start_ns": [20_000_000_000_000 + int(ms * 1_000_000) for ms in starts_ms]}
    defaults = {"end_ns": None, "duration_us": 500, "running_depth": 4, "waiting_depth": 0,
                "num_prefill_reqs": 0, "num_decode_reqs": 4, "scheduled_tokens": 4,
                "prefill_tokens": 0, "decode_tokens": 4, "num_finished": 0, "num_preempted": 0,
                "kv_usage_ratio": 0.1, "kv_blocks_total": 1000, "kv_blocks_free": 900}
    for column, default in defaults.items():
        rows[column] = columns.get(column, [default] * n)
    frame = pd.DataFrame(rows)
    frame["end_ns"] = frame["start_ns"] + frame["duration_us"] * 1000
    return frame[traces.STEP_COLUMNS]


def test_period_only_for_next_step_id(facts):
    a = canonical(LLAMA, "llama-2-70b", 4, [10, 11, 20, 21, 22, 40],
                  [0.0, 18.5, 200.0, 219.25, 238.0, 600.0])
    # sorted, CODE comes first and ends at step 9; LLAMA then starts at step 10 = 9 + 1, which
    # must not make a period across experiments
    b = canonical(CODE, "codellama-34b", 2, [5, 6, 9], [0.0, 15.125, 90.0])
    steps = pd.concat([b, a], ignore_index=True).sort_values(
        ["experiment", "step_id"]).reset_index(drop=True)
    assert steps["experiment"].iloc[2] == CODE and steps["step_id"].iloc[2:4].tolist() == [9, 10]
    rows = features.build_features(steps, facts, 16)
    got = rows.set_index(["experiment", "step_id"])["period_us"]
    expected = {(LLAMA, 10): 18_500.0, (LLAMA, 11): np.nan, (LLAMA, 20): 19_250.0,
                (LLAMA, 21): 18_750.0, (LLAMA, 22): np.nan, (LLAMA, 40): np.nan,
                (CODE, 5): 15_125.0, (CODE, 6): np.nan, (CODE, 9): np.nan}
    for key, value in expected.items():
        if np.isnan(value):
            assert np.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, abs=1e-9), key
    assert rows["period_us"].dtype == np.float64
    # the step_period_us helper on its own agrees
    np.testing.assert_array_equal(features.step_period_us(steps).to_numpy(),
                                  rows["period_us"].to_numpy())


def test_period_rows_on_shipped_data(shipped):
    assert len(shipped) == 20_112
    assert int(shipped["period_us"].notna().sum()) == 1_967
    per_experiment = shipped.groupby("experiment")["period_us"].count()
    assert ((per_experiment > 500) & (per_experiment < 800)).all()
    # the spec's figures: medians of ~18-19 ms (Llama-2-70B TP4) and ~15 ms (CodeLlama-34B TP2)
    medians = shipped.groupby("model")["period_us"].median()
    assert 17_000 < medians["llama-2-70b"] < 20_000
    assert 14_000 < medians["codellama-34b"] < 16_500
    assert (shipped["period_us"].dropna() > 0).all()
    # recomputed independently: next row of the same experiment with step id + 1
    nxt = shipped.groupby("experiment")[["step_id", "start_ns"]].shift(-1)
    consecutive = nxt["step_id"] == shipped["step_id"] + 1
    np.testing.assert_allclose(shipped.loc[consecutive, "period_us"],
                               (nxt.loc[consecutive, "start_ns"]
                                - shipped.loc[consecutive, "start_ns"]) / 1000.0)


def test_kv_sum_and_kv_mean(facts):
    steps = canonical(LLAMA, "llama-2-70b", 4, [1, 5, 9, 13], [0, 10, 20, 30],
                      running_depth=[0, 4, 3, 10], kv_blocks_total=[31356] * 4,
                      kv_blocks_free=[31356, 31300, 31000, 30000],
                      num_decode_reqs=[0, 4, 3, 10], decode_tokens=[0, 4, 3, 10],
                      scheduled_tokens=[0, 4, 3, 10])
    rows = features.build_features(steps, facts, 16)
    np.testing.assert_array_equal(rows["kv_sum"], [0.0, 56 * 16, 356 * 16, 1356 * 16])
    np.testing.assert_allclose(rows["kv_mean"], [0.0, 56 * 16 / 4, 356 * 16 / 3, 1356 * 16 / 10])
    assert np.isfinite(rows["kv_mean"]).all()
    # the block size is a parameter, not a constant
    rows32 = features.build_features(steps, facts, 32)
    np.testing.assert_array_equal(rows32["kv_sum"], 2 * rows["kv_sum"])


def test_kv_mean_zero_when_nothing_runs_even_with_blocks_held(facts):
    steps = canonical(LLAMA, "llama-2-70b", 4, list(range(1, 4)), [0, 20, 40],
                      running_depth=[0, 0, 2], kv_blocks_free=[500, 900, 900])
    rows = features.build_features(steps, facts, 16)
    assert rows["kv_sum"].tolist() == [8000.0, 1600.0, 1600.0]
    assert rows["kv_mean"].tolist() == [0.0, 0.0, 800.0]


def test_tp_aggregation_and_model_facts(facts):
    steps = pd.concat([
        canonical(CODE, "codellama-34b", 2, [1, 2], [0, 15]),
        canonical(LLAMA, "llama-2-70b", 4, [1, 2], [0, 18]),
    ], ignore_index=True)
    rows = features.build_features(steps, facts, 16).set_index("experiment")
    assert rows.loc[CODE, "peak_flops_bf16"].tolist() == [2 * 989.5e12] * 2
    assert rows.loc[LLAMA, "peak_flops_bf16"].tolist() == [4 * 989.5e12] * 2
    assert rows.loc[CODE, "peak_bandwidth"].tolist() == [2 * 3.35e12] * 2
    assert rows.loc[LLAMA, "peak_bandwidth"].tolist() == [4 * 3.35e12] * 2
    assert rows.loc[CODE, "num_layers"].tolist() == [48.0, 48.0]
    assert rows.loc[LLAMA, "num_layers"].tolist() == [80.0, 80.0]
    assert rows.loc[LLAMA, "intermediate_dim"].tolist() == [28672.0, 28672.0]
    assert rows.loc[LLAMA, "num_experts"].tolist() == [1.0, 1.0]


def test_feature_columns_and_targets(shipped):
    available = [f for f in features.FEATURES if f not in features.PER_REQUEST_FEATURES]
    assert list(shipped.columns) == features.IDENTITY + available + list(features.TARGETS)
    assert len(available) == 15
    for column in available + list(features.TARGETS):
        assert shipped[column].dtype == np.float64, column
    assert np.isfinite(shipped[available].to_numpy()).all()
    # duration_us is step.duration_us as it was read
    assert shipped["duration_us"].notna().all() and (shipped["duration_us"] > 0).all()
    assert (shipped["scheduled_tokens"] == shipped["prefill_tokens"]
            + shipped["decode_tokens"]).all()


def test_manifest(shipped):
    manifest = features.build_manifest(shipped, 16, ["data/raw/enriched_steps_3exp.parquet"])
    entries = manifest["features"]
    assert [e["name"] for e in entries] == list(features.FEATURES)
    assert len(entries) == 18
    for entry in entries:
        assert entry["unit"] and entry["derivation"], entry["name"]
        if entry["name"] in ("kv_max", "kv_min", "kv_std"):
            assert entry["available"] is False
            assert "per-request" in entry["why_unavailable"]
            assert "min" not in entry
        else:
            assert entry["available"] is True, entry["name"]
            assert entry["min"] == shipped[entry["name"]].min()
            assert entry["max"] == shipped[entry["name"]].max()
    assert features.available_features(manifest) == [
        c for c in shipped.columns if c not in features.IDENTITY + list(features.TARGETS)]
    targets = {t["name"]: t for t in manifest["targets"]}
    assert set(targets) == {"duration_us", "period_us"}
    assert targets["duration_us"]["rows"] == 20_112
    assert targets["period_us"]["rows"] == 1_967
    assert all(t["unit"] == "µs" and t["derivation"] for t in targets.values())
    assert manifest["kv_block_tokens"] == 16
    assert "TP" in manifest["tp_aggregation"]
    assert sum(e["steps"] for e in manifest["experiments"].values()) == 20_112
    assert sum(e["period_rows"] for e in manifest["experiments"].values()) == 1_967
    assert manifest["experiments"]["20260218-150304-codellama-34b-tp2-general"]["tp"] == 2
