"""Scoring programs: metrics, failures, determinism, fitted text, and the OpenEvolve seam."""

from __future__ import annotations

import math
import struct
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stepformula import evaluator
from stepformula.errors import InputError
from stepformula.evaluator import (FAILURE_SCORE, REGIME_METRICS, AdapterConfig, EvaluatorSettings, TrainingData,
                                   evaluate, evaluate_prepared, evaluate_program_path)
from stepformula.metrics import mape, step_regime

FEATURES = ("prefill_tokens", "decode_tokens", "scheduled_tokens", "num_prefill_reqs", "num_decode_reqs", "kv_sum")
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
THRESHOLDS = {"decode_below": 0.05, "prefill_at_least": 0.25}


def _frame(n: int = 600, seed: int = 3) -> pd.DataFrame:
    """A synthetic train split: all three regimes, time ~ 150 + 0.3 prefill + 3 decode."""
    rng = np.random.default_rng(seed)
    decode = rng.integers(1, 100, n).astype(float)
    kind = np.arange(n) % 3  # 0: decode only, 1: a little prefill, 2: mostly prefill
    prefill = np.select([kind == 0, kind == 1], [0.0, np.round(decode * 0.1)], rng.integers(200, 2000, n)).astype(float)
    frame = pd.DataFrame({
        "prefill_tokens": prefill, "decode_tokens": decode, "scheduled_tokens": prefill + decode,
        "num_prefill_reqs": (prefill > 0).astype(float), "num_decode_reqs": decode,
        "kv_sum": rng.uniform(1e3, 1e5, n),
    })
    frame["duration_us"] = (150.0 + 0.3 * prefill + 3.0 * decode) * rng.uniform(0.9, 1.1, n)
    frame["experiment"], frame["model"], frame["workload"] = "exp", "m", "w"
    frame["step_id"], frame["start_ns"] = np.arange(n), np.arange(n) * 1_000_000
    return frame


def _evaluate(text: str, frame: pd.DataFrame | None = None, **kw):
    frame = _frame() if frame is None else frame
    options = {"lam": 0.01, "refit": False, **THRESHOLDS, **kw}
    return evaluate(text, {name: frame[name].to_numpy() for name in FEATURES}, frame["duration_us"].to_numpy(),
                    feature_names=FEATURES, **options)


def _bits(metrics: dict) -> dict:
    """Metrics as exact bit patterns (NaN-safe equality)."""
    return {k: struct.pack("<d", float(v)) for k, v in metrics.items()}


GOOD = 'def predict(f):\n    return 150.0 + 0.3 * f["prefill_tokens"] + 3.0 * f["decode_tokens"]\n'
OFF = 'def predict(f):\n    return 40.0 + 1.0 * f["prefill_tokens"] + 1.0 * f["decode_tokens"]\n'


def test_metrics_of_a_valid_program():
    frame = _frame()
    result = _evaluate(GOOD, frame)
    m = result.metrics
    predicted = 150.0 + 0.3 * frame["prefill_tokens"] + 3.0 * frame["decode_tokens"]
    assert m["mape"] == mape(frame["duration_us"], predicted)
    assert 0 < m["mape"] < 0.1
    assert m["num_operations"] == 4 and m["refused"] == 0 and m["failed"] == 0
    assert m["combined_score"] == -m["mape"] - 0.01 * 4
    regime = step_regime(frame["prefill_tokens"], frame["scheduled_tokens"], **THRESHOLDS)
    ape = np.abs(predicted - frame["duration_us"]) / frame["duration_us"]
    for index, key in enumerate(REGIME_METRICS):
        assert m[key] == pytest.approx(float(ape[regime == index].mean()), rel=1e-12)
    assert m["error_regime"] == int(np.argmax([ape[regime == i].mean() for i in range(3)]))
    assert result.failure is None and "training MAPE" in result.summary


def test_error_regime_is_the_regime_with_the_largest_total_error():
    frame = _frame()
    # Exact on decode and prefill rows, 10x off on the mixed rows only: regime 1 holds the error.
    text = ('import numpy as np\ndef predict(f):\n'
            '    share = f["prefill_tokens"] / f["scheduled_tokens"]\n'
            '    mixed = np.where(share >= 0.05, np.where(share < 0.25, 10.0, 1.0), 1.0)\n'
            '    return mixed * (150.0 + 0.3 * f["prefill_tokens"] + 3.0 * f["decode_tokens"])\n')
    assert _evaluate(text, frame).metrics["error_regime"] == 1
    text_prefill = text.replace("np.where(share < 0.25, 10.0, 1.0), 1.0)", "np.where(share < 0.25, 1.0, 10.0), 1.0)")
    assert _evaluate(text_prefill, frame).metrics["error_regime"] == 2


def test_a_regime_without_rows_is_nan_and_left_out_for_openevolve():
    frame = _frame()
    frame = frame[frame["prefill_tokens"] == 0]  # decode-only rows
    result = _evaluate(GOOD, frame)
    assert math.isnan(result.metrics["mape_mixed"]) and math.isnan(result.metrics["mape_prefill"])
    assert result.metrics["error_regime"] == 0
    metrics = result.to_openevolve().metrics
    assert "mape_mixed" not in metrics and "mape_decode" in metrics and "error_regime" in metrics


@pytest.mark.parametrize("body,operations,reason", [
    ('np.log(f["decode_tokens"] - 1000.0)', 2, "NaN on"),
    ('f["decode_tokens"] / (f["decode_tokens"] * 0.0)', 2, "infinite on"),
    ('f["decode_tokens"] * 0.0', 1, "zero or negative"),
    ('100.0 - f["decode_tokens"] * 2.0', 2, "zero or negative"),
    ('np.where(f["decode_tokens"] > 1.0 / 0.0, 1.0, 2.0)', 3, "exception during execution: ZeroDivisionError"),
])
def test_unusable_predictions_are_failures_with_a_reason(body, operations, reason):
    text = f"import numpy as np\ndef predict(f):\n    return {body}\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy floating errors must not warn
        result = _evaluate(text, refit=False)
    assert result.failure is not None and reason in result.failure, result.failure
    m = result.metrics
    assert m["combined_score"] == FAILURE_SCORE and m["failed"] == 1 and m["refused"] == 0
    assert math.isnan(m["mape"]) and all(math.isnan(m[key]) for key in REGIME_METRICS)
    assert m["num_operations"] == operations and m["error_regime"] == 0
    assert result.to_openevolve().artifacts["failure"] == result.failure


def test_refit_cannot_hide_a_failure_without_constants():
    result = _evaluate('def predict(f):\n    return f["decode_tokens"] - f["scheduled_tokens"]\n', refit=True)
    assert "zero or negative" in result.failure and result.metrics["combined_score"] == FAILURE_SCORE


def test_refit_can_rescue_an_invalid_program():
    text = 'def predict(f):\n    return 100.0 - f["decode_tokens"] * 2.0\n'
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = _evaluate(text, refit=True)
    assert result.failure is None and result.metrics["constants_refitted"] == 1
    assert result.metrics["mape"] < 1.0


def test_failure_reason_shows_an_offending_row():
    result = _evaluate('def predict(f):\n    return 100.0 - f["decode_tokens"] * 2.0\n')
    assert "first such row: decode_tokens=" in result.failure


def test_refused_program_still_has_every_map_elites_dimension():
    result = _evaluate('import os\ndef predict(f):\n    return f["decode_tokens"]\n')
    m = result.metrics
    assert m["refused"] == 1 and m["failed"] == 1 and m["combined_score"] == FAILURE_SCORE
    assert m["num_operations"] == 60 and m["error_regime"] == 0  # the sentinel is the hard limit
    assert "refused: line 1: import of 'os'" in result.failure
    artifacts = result.to_openevolve().artifacts
    assert "import of 'os'" in artifacts["failure"]


def test_any_valid_program_outscores_any_failure():
    awful = _evaluate('def predict(f):\n    return 1e300 * f["decode_tokens"]\n')
    assert awful.failure is None and awful.metrics["combined_score"] > FAILURE_SCORE


def test_a_constant_program_is_broadcast():
    frame = _frame()
    result = _evaluate("def predict(f):\n    return 500.0\n", frame)
    assert result.failure is None
    assert result.metrics["mape"] == mape(frame["duration_us"], np.full(len(frame), 500.0))


def test_same_program_twice_gives_bit_identical_metrics():
    first = _evaluate(OFF, refit=True)
    second = _evaluate(OFF, refit=True)
    assert _bits(first.metrics) == _bits(second.metrics)
    assert first.fitted_text == second.fitted_text


def test_refit_improves_and_fitted_text_reproduces_the_score_exactly():
    plain = _evaluate(OFF, refit=False)
    fitted = _evaluate(OFF, refit=True)
    assert fitted.metrics["mape"] < plain.metrics["mape"] / 3
    assert fitted.metrics["constants_refitted"] == 1 and fitted.fitted_text != OFF
    replay = _evaluate(fitted.fitted_text, refit=False)
    assert struct.pack("<d", replay.metrics["mape"]) == struct.pack("<d", fitted.metrics["mape"])
    assert replay.metrics["combined_score"] == fitted.metrics["combined_score"]
    assert fitted.to_openevolve().artifacts["fitted_program"] == fitted.fitted_text


def test_inputs_are_validated_and_not_modified():
    frame = _frame()
    features = {name: frame[name].to_numpy(copy=True) for name in FEATURES}
    target = frame["duration_us"].to_numpy(copy=True)
    evaluate(GOOD, features, target, feature_names=FEATURES, lam=0.01, **THRESHOLDS)
    assert features["decode_tokens"].flags.writeable and target.flags.writeable
    features["kv_sum"][3] = np.nan
    with pytest.raises(InputError, match="'kv_sum' has 1 non-finite"):
        evaluate(GOOD, features, target, feature_names=FEATURES, lam=0.01, **THRESHOLDS)
    with pytest.raises(InputError, match="missing"):
        evaluate(GOOD, features, target, feature_names=[*FEATURES, "kv_mean"], lam=0.01, **THRESHOLDS)


def test_settings_come_from_params_yaml():
    params = yaml.safe_load(PARAMS.read_text())
    duration = EvaluatorSettings.from_params(params, "duration_us")
    period = EvaluatorSettings.from_params(params, "period_us")
    assert duration.lam == 0.01 and 0 < period.lam < duration.lam
    assert duration.refit is True and duration.limits.max_operations == 60
    assert (duration.decode_below, duration.prefill_at_least) == (0.05, 0.25)
    with pytest.raises(InputError, match="evaluator settings"):
        EvaluatorSettings.from_params({"regime": params["regime"]}, "duration_us")


# ---- OpenEvolve seam -----------------------------------------------------------------------------

@pytest.fixture
def split(tmp_path):
    path = tmp_path / "train.parquet"
    _frame().to_parquet(path)
    yield path
    evaluator.configure(None)


def test_evaluate_program_path_returns_an_evaluation_result(split, tmp_path):
    from openevolve.evaluation_result import EvaluationResult

    settings = EvaluatorSettings(lam=0.01, refit=True, **THRESHOLDS)
    evaluator.configure(AdapterConfig(str(split), "duration_us", FEATURES, settings))
    program = tmp_path / "candidate.py"
    program.write_text(OFF)
    result = evaluate_program_path(str(program))
    assert isinstance(result, EvaluationResult)
    assert {"combined_score", "mape", "num_operations", "error_regime", "refused"} <= set(result.metrics)
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert "training MAPE" in result.artifacts["evaluation"]
    data = TrainingData.from_arrays({n: _frame()[n].to_numpy() for n in FEATURES}, _frame()["duration_us"],
                                    feature_names=FEATURES, **THRESHOLDS)
    assert result.metrics == evaluate_prepared(OFF, data, settings).to_openevolve().metrics

    hostile = tmp_path / "hostile.py"
    hostile.write_text("import os\ndef predict(f):\n    return f['decode_tokens']\n")
    refused = evaluate_program_path(str(hostile))
    assert refused.metrics["refused"] == 1 and "import of 'os'" in refused.artifacts["failure"]
    missing = evaluate_program_path(str(tmp_path / "absent.py"))
    assert missing.metrics["combined_score"] == FAILURE_SCORE and "cannot read" in missing.artifacts["failure"]


def test_configuration_by_environment_variable(split, tmp_path, monkeypatch):
    config_path = tmp_path / "evaluator.json"
    AdapterConfig(str(split), "duration_us", FEATURES, EvaluatorSettings(lam=0.02, refit=False, **THRESHOLDS)
                  ).write(config_path)
    evaluator.configure(None)
    monkeypatch.setenv(evaluator.CONFIG_ENV_VAR, str(config_path))
    program = tmp_path / "p.py"
    program.write_text(GOOD)
    metrics = evaluate_program_path(str(program)).metrics
    assert metrics["combined_score"] == -metrics["mape"] - 0.02 * 4
    assert AdapterConfig.read(config_path).settings.lam == 0.02


def test_unconfigured_adapter_raises(monkeypatch):
    evaluator.configure(None)
    monkeypatch.delenv(evaluator.CONFIG_ENV_VAR, raising=False)
    with pytest.raises(InputError, match="not configured"):
        evaluate_program_path("whatever.py")
