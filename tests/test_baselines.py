"""The baselines. The key check: through the library path (raw parquet -> traces.read_all ->
features.build_features -> splits.temporal_split), the per-experiment black box reproduces the
BLIS study's published test MAPEs on duration_us to 0.01 pp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stepformula import baselines, engineered, features, roofline, splits, traces
from stepformula.errors import InputError
from stepformula.facts import load_facts

REPO = Path(__file__).resolve().parents[1]
RAW = REPO / "data" / "raw" / "enriched_steps_3exp.parquet"
FACTS = REPO / "data" / "models.yaml"
PUBLISHED_TEST_MAPE_PCT = {  # BLIS study, blackbox b0 + b1*prefill + b2*decode per experiment
    "20260217-202857-llama-2-70b-tp4-general": 61.15,
    "20260217-203421-llama-2-70b-hf-tp4-codegen": 90.76,
    "20260218-150304-codellama-34b-tp2-general": 151.06,
}
HGB_ITER = 50  # fewer than params.yaml's 200, to keep the suite fast; determinism is the point


@pytest.fixture(scope="module")
def facts():
    return load_facts(FACTS, "H100-SXM-80GB")


@pytest.fixture(scope="module")
def rows(facts) -> pd.DataFrame:
    return features.build_features(traces.read_all([RAW]), facts, 16)


@pytest.fixture(scope="module")
def duration_parts(rows) -> dict:
    return splits.temporal_split(rows, "duration_us", 0.6, 0.2)


@pytest.fixture(scope="module")
def period_parts(rows) -> dict:
    return splits.temporal_split(rows, "period_us", 0.6, 0.2)


@pytest.fixture(scope="module")
def period_fitted(period_parts, facts):
    return baselines.fit_baselines(period_parts["train"], "period_us", facts, 1.0, HGB_ITER, 0)


def test_blackbox_reproduces_published_test_mape(duration_parts, facts):
    # hgb_max_iter does not touch the black box; 1 keeps this fast
    fitted = baselines.fit_baselines(duration_parts["train"], "duration_us", facts, 1.0, 1, 0)
    scores = baselines.score_baselines(fitted, duration_parts["test"])
    got = {e: 100 * s["mape"]
           for e, s in scores["blackbox_per_experiment"]["experiments"].items()}
    assert set(got) == set(PUBLISHED_TEST_MAPE_PCT)
    for experiment, published in PUBLISHED_TEST_MAPE_PCT.items():
        assert abs(got[experiment] - published) <= 0.01, (experiment, got[experiment])
    counts = {e: s["n"] for e, s in scores["blackbox_per_experiment"]["experiments"].items()}
    assert counts == {"20260217-202857-llama-2-70b-tp4-general": 1199,
                      "20260217-203421-llama-2-70b-hf-tp4-codegen": 1336,
                      "20260218-150304-codellama-34b-tp2-general": 1489}


def test_blackbox_is_one_ols_fit_per_experiment(duration_parts, facts):
    fitted = baselines.fit_baselines(duration_parts["train"], "duration_us", facts, 1.0, 1, 0)
    coefficients = baselines.blackbox_coefficients(fitted)
    assert set(coefficients) == {"global"} | set(PUBLISHED_TEST_MAPE_PCT)
    train = duration_parts["train"]
    for experiment in PUBLISHED_TEST_MAPE_PCT:
        part = train[train["experiment"] == experiment]
        X = np.column_stack([np.ones(len(part)), part["prefill_tokens"], part["decode_tokens"]])
        b, *_ = np.linalg.lstsq(X, part["duration_us"].to_numpy(), rcond=None)
        c = coefficients[experiment]
        np.testing.assert_allclose([c["b0"], c["b1_prefill"], c["b2_decode"]], b, rtol=1e-6)
    # the study's finding: scheduler time follows decode tokens (positive slope)
    assert all(c["b2_decode"] > 0 for c in coefficients.values())


def test_fitting_twice_gives_identical_predictions(period_parts, period_fitted, facts):
    again = baselines.fit_baselines(period_parts["train"], "period_us", facts, 1.0, HGB_ITER, 0)
    valid = period_parts["valid"]
    for name in baselines.BASELINES:
        np.testing.assert_array_equal(period_fitted.predict(name, valid),
                                      again.predict(name, valid), err_msg=name)


def test_every_baseline_has_valid_scores_per_experiment(period_parts, period_fitted):
    valid = period_parts["valid"]
    scores = baselines.score_baselines(period_fitted, valid)
    assert set(scores) == set(baselines.BASELINES)
    sizes = valid.groupby("experiment").size().to_dict()
    for name, result in scores.items():
        assert set(result["experiments"]) == set(sizes), name
        for experiment, summary in result["experiments"].items():
            assert summary["n"] == sizes[experiment] and summary["n_excluded"] == 0
            for key in ("mape", "median_ape", "p90_ape", "wape"):
                assert np.isfinite(summary[key]) and summary[key] >= 0, (name, experiment, key)
        mean = np.mean([s["mape"] for s in result["experiments"].values()])
        assert result["mean_over_experiments"]["mape"] == pytest.approx(mean)
        assert result["pooled"]["n"] == len(valid)
    # fitted models predict the ~18 ms period far better than an unfitted roofline
    assert scores["blackbox_per_experiment"]["mean_over_experiments"]["mape"] < 0.2
    assert scores["hgb_global"]["mean_over_experiments"]["mape"] < 0.2


def test_fit_ignores_unscoreable_train_rows(period_parts, facts):
    train = period_parts["train"]
    spoiled = train.copy()
    spoiled.loc[spoiled.index[::7], "period_us"] = np.nan
    spoiled.loc[spoiled.index[3::7], "period_us"] = 0.0
    kept = spoiled[spoiled["period_us"] > 0]
    a = baselines.fit_baselines(spoiled, "period_us", facts, 1.0, 5, 0)
    b = baselines.fit_baselines(kept, "period_us", facts, 1.0, 5, 0)
    valid = period_parts["valid"]
    for name in baselines.BASELINES:
        np.testing.assert_allclose(a.predict(name, valid), b.predict(name, valid), err_msg=name)


def test_unknown_experiment_at_prediction(period_parts, period_fitted):
    valid = period_parts["valid"].copy()
    valid["experiment"] = "20260101-000000-llama-2-70b-tp4-roleplay"
    with pytest.raises(InputError, match="no fit for this experiment"):
        period_fitted.predict("blackbox_per_experiment", valid)
    # global models do not care which experiment a row is from
    assert np.isfinite(period_fitted.predict("blackbox_global", valid)).all()


def test_roofline_has_no_fitted_state(rows, facts, period_fitted):
    frame = rows.iloc[::50]
    unfitted = baselines.FittedBaselines(target="duration_us", facts=facts)
    direct = roofline.roofline_us(frame, facts)
    np.testing.assert_array_equal(unfitted.predict("roofline", frame), direct)
    np.testing.assert_array_equal(period_fitted.predict("roofline", frame), direct)
    parts = roofline.roofline_parts_us(frame, facts)
    assert set(parts) == {"prefill_gemm", "prefill_attention", "decode_gemm", "decode_attention"}
    np.testing.assert_allclose(np.sum(list(parts.values()), axis=0), direct)


def test_roofline_times_are_positive_and_finite(rows, facts):
    predicted = roofline.roofline_us(rows, facts)
    assert np.isfinite(predicted).all()
    work = rows["scheduled_tokens"].to_numpy() > 0
    assert (predicted[work] > 0).all()
    # a step that schedules no token runs no kernel: the raw decomposition gives it 0
    assert (~work).sum() == 2 and (predicted[~work] == 0).all()
    # every step with decode tokens reads all the weights once: >= ~10 ms for Llama-2-70B TP4
    llama = (rows["model"] == "llama-2-70b").to_numpy() & work
    assert (predicted[llama] >= 10_216).all()


def test_roofline_by_hand(facts):
    """One decode token of Llama-2-70B on 4 H100s with no KV: the weight read alone."""
    frame = pd.DataFrame({"model": ["llama-2-70b"], "prefill_tokens": [0.0],
                          "decode_tokens": [1.0], "num_prefill_reqs": [0.0], "kv_sum": [0.0],
                          "peak_flops_bf16": [4 * 989.5e12], "peak_bandwidth": [4 * 3.35e12]})
    # per layer: q, o 8192^2 each; k, v 8192*1024 each; MLP 3*8192*28672; 80 layers; BF16
    weight_bytes = 2 * 80 * (2 * 8192**2 + 2 * 8192 * 1024 + 3 * 8192 * 28672)
    assert weight_bytes == 136_902_082_560
    expected_us = weight_bytes / (4 * 3.35e12) * 1e6
    parts = roofline.roofline_parts_us(frame, facts)
    assert parts["decode_gemm"][0] == pytest.approx(expected_us)
    assert parts["prefill_gemm"][0] == parts["prefill_attention"][0] == 0
    assert parts["decode_attention"][0] == 0
    # 2048 prefill tokens in one request: compute-bound GEMM (2 FLOPs per active weight)
    frame2 = frame.assign(prefill_tokens=[2048.0], decode_tokens=[0.0], num_prefill_reqs=[1.0])
    parts2 = roofline.roofline_parts_us(frame2, facts)
    flops = 2 * 2048 * (weight_bytes / 2)
    assert parts2["prefill_gemm"][0] == pytest.approx(flops / (4 * 989.5e12) * 1e6)
    assert parts2["decode_gemm"][0] == 0
    # attention: 2048^2/2 pairs, 4*d FLOPs per pair per layer
    attention_flops = 4 * 8192 * 80 * 2048 * 2048 / 2
    assert parts2["prefill_attention"][0] == pytest.approx(
        max(attention_flops / (4 * 989.5e12),
            2 * 2 * 80 * 1024 * 2048 / (4 * 3.35e12)) * 1e6)


def test_engineered_set_is_documented(rows):
    table = engineered.engineered_features(rows.iloc[:500])
    assert list(table.columns) == engineered.ALL_COLUMNS
    assert len(engineered.ALL_COLUMNS) >= 30
    assert len(set(engineered.ALL_COLUMNS)) == len(engineered.ALL_COLUMNS)
    extra = [c for c in table.columns if c not in engineered.RAW]
    assert len(extra) >= 15
    for column in extra:
        assert len(engineered.ENGINEERED.get(column, "")) > 10, column
    # built from available raw features only: nothing that needs per-request KV lengths
    available = [f for f in features.FEATURES if f not in features.PER_REQUEST_FEATURES]
    assert set(engineered.RAW) <= set(available)
    assert not set(features.PER_REQUEST_FEATURES) & set(table.columns)
    assert all(table[c].dtype == np.float64 for c in table.columns)


def test_engineered_values(rows):
    table = engineered.engineered_features(rows)
    assert np.isfinite(table.to_numpy()).all()
    llama = (rows["model"] == "llama-2-70b").to_numpy()
    weight_bytes = 2 * 80 * (4 * 8192**2 + 3 * 8192 * 28672)
    np.testing.assert_allclose(table.loc[llama, "weight_bytes"], weight_bytes)
    np.testing.assert_allclose(table.loc[llama, "weight_read_us"],
                               weight_bytes / (4 * 3.35e12) * 1e6)
    np.testing.assert_array_equal(table["batch_reqs"],
                                  rows["num_prefill_reqs"] + rows["num_decode_reqs"])
    np.testing.assert_array_equal(table["has_prefill"], (rows["prefill_tokens"] > 0) * 1.0)
    assert (table["is_moe"] == 0).all() and (table["active_expert_share"] == 1).all()
