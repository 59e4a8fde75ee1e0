"""Error measures on hand numbers, the zero/missing rule, and regimes from thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stepformula import metrics


def test_measures_on_hand_numbers():
    actual = np.array([100.0, 200.0, 400.0, 50.0])
    predicted = np.array([110.0, 150.0, 400.0, 100.0])
    # APEs: 0.10, 0.25, 0.0, 1.0
    s = metrics.error_summary(actual, predicted)
    assert s["mape"] == pytest.approx(1.35 / 4)
    assert s["median_ape"] == pytest.approx((0.10 + 0.25) / 2)
    # numpy's linear quantile at 0.9 of [0, .1, .25, 1]: position 2.7 -> .25 + .7 * .75
    assert s["p90_ape"] == pytest.approx(0.25 + 0.7 * 0.75)
    assert s["wape"] == pytest.approx((10 + 50 + 0 + 50) / 750)
    assert (s["n"], s["n_excluded"]) == (4, 0)
    assert metrics.mape(actual, predicted) == pytest.approx(0.3375)
    np.testing.assert_allclose(metrics.abs_pct_errors(actual, predicted), [0.1, 0.25, 0.0, 1.0])


def test_mape_is_relative_to_actual_not_predicted():
    assert metrics.mape(np.array([100.0]), np.array([50.0])) == pytest.approx(0.5)
    assert metrics.mape(np.array([50.0]), np.array([100.0])) == pytest.approx(1.0)


def test_scalar_prediction_broadcasts():
    s = metrics.error_summary(np.array([1.0, 2.0, 4.0]), 2.0)
    assert s["mape"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)


def test_zero_and_missing_targets_are_excluded_and_counted():
    actual = np.array([100.0, 0.0, np.nan, 200.0, -5.0, np.inf])
    predicted = np.array([120.0, 7.0, 9.0, 200.0, 3.0, 1.0])
    s = metrics.error_summary(actual, predicted)
    assert (s["n"], s["n_excluded"]) == (2, 4)
    assert s["mape"] == pytest.approx(0.1)
    assert s["wape"] == pytest.approx(20 / 300)
    assert metrics.mape(actual, predicted) == pytest.approx(0.1)
    np.testing.assert_array_equal(metrics.scored_mask(actual),
                                  [True, False, False, True, False, False])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_bad_prediction_on_a_scored_row_gives_nan(bad):
    actual = np.array([100.0, 200.0, 300.0])
    predicted = np.array([100.0, bad, 300.0])
    assert math.isnan(metrics.mape(actual, predicted))
    s = metrics.error_summary(actual, predicted)
    for key in ("mape", "median_ape", "p90_ape", "wape"):
        assert math.isnan(s[key]), key
    assert s["n"] == 3  # the row is scored, not dropped


def test_bad_prediction_on_an_excluded_row_is_harmless():
    actual = np.array([100.0, 0.0, np.nan])
    predicted = np.array([110.0, np.nan, np.inf])
    assert metrics.mape(actual, predicted) == pytest.approx(0.1)


def test_nothing_to_score():
    s = metrics.error_summary(np.array([0.0, np.nan]), np.array([1.0, 1.0]))
    assert s["n"] == 0 and s["n_excluded"] == 2
    assert all(math.isnan(s[k]) for k in ("mape", "median_ape", "p90_ape", "wape"))
    assert math.isnan(metrics.mape(np.array([0.0]), np.array([1.0])))


def test_prefill_share():
    np.testing.assert_allclose(metrics.prefill_share([0, 10, 50, 7], [0, 100, 50, 0]),
                               [0.0, 0.1, 1.0, 0.0])


def test_regimes_from_thresholds():
    prefill = np.array([0, 0, 4, 5, 24, 25, 100, 90])
    scheduled = np.array([0, 10, 100, 100, 100, 100, 100, 100])
    got = metrics.step_regime(prefill, scheduled, 0.05, 0.25)
    # share: 0 (empty step), 0, .04, .05, .24, .25, 1, .9
    np.testing.assert_array_equal(got, [0, 0, 0, 1, 1, 2, 2, 2])
    assert [metrics.REGIMES[i] for i in got[[0, 3, 5]]] == [
        "decode-dominated", "mixed", "prefill-dominated"]
    # other thresholds move the boundaries
    np.testing.assert_array_equal(metrics.step_regime(prefill, scheduled, 0.01, 0.95),
                                  [0, 0, 1, 1, 1, 1, 2, 1])
    # equal thresholds: no mixed regime
    assert 1 not in metrics.step_regime(prefill, scheduled, 0.2, 0.2)


@pytest.mark.parametrize("low, high", [(0.3, 0.2), (-0.1, 0.2), (0.1, 1.5)])
def test_bad_thresholds_raise(low, high):
    with pytest.raises(ValueError, match="thresholds"):
        metrics.step_regime(np.array([1]), np.array([2]), low, high)


def test_params_regime_thresholds_are_valid():
    import yaml
    from pathlib import Path
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    regime = params["regime"]
    got = metrics.step_regime(np.array([0, 10, 50]), np.array([100, 100, 100]),
                              regime["decode_below"], regime["prefill_at_least"])
    assert got.tolist() == [0, 1, 2]
