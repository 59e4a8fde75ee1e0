"""Scoring a candidate program on a split, and the OpenEvolve `evaluate(program_path)` seam.

Fitness: combined_score = -mape - lam * num_operations (mape as a fraction, on training rows,
after refitting the constants when `refit` is on; see stepformula.fit). A valid program's mape
term is capped at MAPE_CAP so that any valid program outscores any failure.

Failures never raise. A program fails when the checker refuses it, when running it raises, or
when its prediction is unusable: not a number per row (a shape other than the rows'; a 0-d
result, i.e. a constant formula, is broadcast to every row), NaN or infinite on any row, or zero
or negative on any row (a step time must be > 0; every row counts, including rows whose target is
not scored, because the formula will be shipped and run on such rows). A failure gets
combined_score = FAILURE_SCORE (finite), NaN MAPEs, `failed` = 1, `refused` = 1 if the checker
refused it, a reason in `failure`, and still every MAP-Elites dimension: num_operations is the
count when the program was checked, else the sentinel `limits.max_operations` (the top of the
range, so bins do not drift); error_regime is 0 (any valid program displaces a failure from its
cell).

error_regime: the index (metrics.REGIMES: 0 decode-dominated, 1 mixed, 2 prefill-dominated) of the
regime where the program is worst: the largest per-regime MAPE (ties go to the lower index; a
regime with no scored rows has NaN MAPE and is never chosen). Not the largest SUM of errors:
decode-dominated steps are ~70% of the rows, so the sum would name them for nearly every
program and the archive's regime dimension would hold one cell.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from stepformula.errors import InputError
from stepformula.fit import refit_constants
from stepformula.metrics import REGIMES, abs_pct_errors, scored_mask, step_regime
from stepformula.program import CheckedProgram, Limits, ProgramRefused, check_program

FAILURE_SCORE = -1e9
MAPE_CAP = 1e6
REGIME_METRICS = ("mape_decode", "mape_mixed", "mape_prefill")
CONFIG_ENV_VAR = "STEPFORMULA_EVALUATOR_CONFIG"
_REASON_CHARS = 300


@dataclass(frozen=True)
class EvaluatorSettings:
    """How a program is scored: the size penalty, the refit, the regime thresholds and the limits."""

    lam: float
    refit: bool = True
    max_evaluations: int = 200
    max_fit_rows: int = 4000
    decode_below: float = 0.05
    prefill_at_least: float = 0.25
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_params(cls, params: Mapping, target: str) -> EvaluatorSettings:
        """Settings for one target from the parsed params.yaml (`evaluator:` and `regime:`)."""
        try:
            section, regime = params["evaluator"], params["regime"]
            lam = section["lambda"][target]
            return cls(
                lam=float(lam), refit=bool(section["refit_constants"]),
                max_evaluations=int(section["refit_max_evaluations"]),
                max_fit_rows=int(section["refit_max_rows"]),
                decode_below=float(regime["decode_below"]), prefill_at_least=float(regime["prefill_at_least"]),
                limits=Limits(max_chars=int(section["max_program_chars"]),
                              max_nodes=int(section["max_syntax_nodes"]),
                              max_depth=int(section["max_nesting_depth"]),
                              max_operations=int(section["max_operations_hard"]),
                              max_abs_exponent=float(section["max_abs_exponent"])))
        except (KeyError, TypeError) as e:
            raise InputError("params.yaml", f"evaluator settings for target {target!r}: missing or bad key {e}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> EvaluatorSettings:
        values = dict(values)
        values["limits"] = Limits(**values.get("limits", {}))
        return cls(**values)


@dataclass(frozen=True)
class TrainingData:
    """The rows a program is scored on, prepared once: float64 features, target and regime per row."""

    features: Mapping[str, np.ndarray]
    target: np.ndarray
    regime: np.ndarray
    feature_names: tuple[str, ...]

    @property
    def n_rows(self) -> int:
        return int(self.target.shape[0])

    @classmethod
    def from_arrays(cls, features: Mapping[str, np.ndarray], target: np.ndarray, *,
                    feature_names: Sequence[str], decode_below: float, prefill_at_least: float,
                    prefill_tokens: np.ndarray | None = None, scheduled_tokens: np.ndarray | None = None,
                    source: str = "training data") -> TrainingData:
        """Validate and convert; regimes come from prefill/scheduled tokens (given, or the features)."""
        # Copies, made read-only: programs share them across evaluations, the caller keeps its own.
        target = np.array(target, dtype=np.float64, copy=True)
        if target.ndim != 1:
            raise InputError(source, f"target must be one-dimensional, got shape {target.shape}")
        missing = [name for name in feature_names if name not in features]
        if missing:
            raise InputError(source, f"features listed as available are missing: {missing}")
        converted: dict[str, np.ndarray] = {}
        for name in feature_names:
            values = np.array(features[name], dtype=np.float64, copy=True)
            if values.shape != target.shape:
                raise InputError(source, f"feature {name!r} has shape {values.shape}, target {target.shape}")
            if not np.all(np.isfinite(values)):
                # A NaN feature would make every program reading it fail, silently, for the whole run.
                raise InputError(source, f"feature {name!r} has {int((~np.isfinite(values)).sum())} non-finite values")
            values.flags.writeable = False
            converted[name] = values
        if prefill_tokens is None or scheduled_tokens is None:
            if "prefill_tokens" not in converted or "scheduled_tokens" not in converted:
                raise InputError(source, "regimes need prefill_tokens and scheduled_tokens (as features or given)")
            prefill_tokens, scheduled_tokens = converted["prefill_tokens"], converted["scheduled_tokens"]
        regime = step_regime(prefill_tokens, scheduled_tokens, decode_below, prefill_at_least)
        if regime.shape != target.shape:
            raise InputError(source, f"regime inputs have shape {regime.shape}, target {target.shape}")
        target.flags.writeable = False
        return cls(converted, target, regime, tuple(feature_names))


@dataclass(frozen=True)
class Evaluation:
    """The score of one program: metrics (MAP-Elites dimensions included), fitted text, failure reason."""

    metrics: dict[str, float]
    fitted_text: str | None  # the program with fitted constants written back; None if it did not check
    failure: str | None      # why the program failed; None when it was scored
    summary: str

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def artifacts(self) -> dict[str, str]:
        """What later prompts should see: the outcome, and the fitted program when the fit moved constants."""
        artifacts = {"evaluation": self.summary}
        if self.failure is not None:
            artifacts["failure"] = self.failure
        elif self.fitted_text is not None and self.metrics.get("constants_refitted") == 1:
            artifacts["fitted_program"] = self.fitted_text
        return artifacts

    def to_openevolve(self):
        """As openevolve's EvaluationResult; NaN metrics (undefined MAPEs) are left out."""
        from openevolve.evaluation_result import EvaluationResult  # imported late: workers only

        metrics = {k: v for k, v in self.metrics.items() if not (isinstance(v, float) and math.isnan(v))}
        return EvaluationResult(metrics=metrics, artifacts=self.artifacts())


def evaluate(text: str, features: Mapping[str, np.ndarray], target: np.ndarray, *,
             feature_names: Sequence[str], lam: float, refit: bool = True, max_evaluations: int = 200,
             max_fit_rows: int = 4000,
             decode_below: float = 0.05, prefill_at_least: float = 0.25,
             prefill_tokens: np.ndarray | None = None, scheduled_tokens: np.ndarray | None = None,
             limits: Limits = Limits()) -> Evaluation:
    """Score program `text` on (features, target). Bad data raises InputError; a bad program never raises."""
    data = TrainingData.from_arrays(features, target, feature_names=feature_names, decode_below=decode_below,
                                    prefill_at_least=prefill_at_least, prefill_tokens=prefill_tokens,
                                    scheduled_tokens=scheduled_tokens)
    settings = EvaluatorSettings(lam=lam, refit=refit, max_evaluations=max_evaluations, max_fit_rows=max_fit_rows,
                                 decode_below=decode_below, prefill_at_least=prefill_at_least, limits=limits)
    return evaluate_prepared(text, data, settings)


def evaluate_prepared(text: str, data: TrainingData, settings: EvaluatorSettings) -> Evaluation:
    """Score program `text` on prepared rows (the per-evaluation path: no data conversion)."""
    try:
        program = check_program(text, data.feature_names, settings.limits)
    except ProgramRefused as refusal:
        return _failed(f"refused: {refusal.reason}", settings.limits.max_operations, None, refused=True)
    try:
        run = program.compile_parametric()
    except Exception as e:  # noqa: BLE001 - a checked program should compile; never let it escape
        return _failed(f"could not compile: {type(e).__name__}: {e}", program.num_operations, text, refused=True)

    values = program.fittable_values
    prediction, problem, fixable = _predict(run, program, data, values)
    refitted = False
    # An exception or a wrong shape does not depend on the constants: only value problems
    # (NaN, inf, <= 0) and valid programs are worth a refit.
    if settings.refit and values.size and (problem is None or fixable):
        fit = refit_constants(program, data.features, data.target, max_evaluations=settings.max_evaluations,
                              max_rows=settings.max_fit_rows)
        if fit.improved:
            values, refitted = fit.values, True
            prediction, problem, fixable = _predict(run, program, data, values)
    fitted_text = program.with_constants(values) if refitted else program.text
    if problem is not None:
        return _failed(problem, program.num_operations, fitted_text, refused=False)
    return _scored(prediction, program, data, settings, fitted_text, refitted)


def _predict(run, program: CheckedProgram, data: TrainingData,
             values: np.ndarray) -> tuple[np.ndarray | None, str | None, bool]:
    """(prediction per row, None, _) or (None, why it is unusable, whether other constants could fix it)."""
    try:
        with np.errstate(all="ignore"):
            result = run(data.features, values)
    except Exception as e:  # noqa: BLE001 - untrusted code: every exception is a failure
        return None, f"exception during execution: {type(e).__name__}: {str(e)[:_REASON_CHARS]}", False
    if not isinstance(result, (np.ndarray, np.floating, float, int)) or isinstance(result, bool):
        return None, f"predict returned a {type(result).__name__}, not an array of numbers", False
    result = np.asarray(result, dtype=np.float64)
    if result.ndim == 0:
        result = np.full(data.target.shape, float(result))  # a constant formula predicts every row
    if result.shape != data.target.shape:
        return None, f"shape mismatch: prediction has shape {result.shape}, expected {data.target.shape}", False
    not_finite = ~np.isfinite(result)
    if not_finite.any():
        n_nan, n_inf = int(np.isnan(result).sum()), int(np.isinf(result).sum())
        return None, (f"prediction is NaN on {n_nan} and infinite on {n_inf} of {result.size} rows"
                      f"{_row_example(program, data, int(np.argmax(not_finite)))}"), True
    not_positive = result <= 0
    if not_positive.any():
        return None, (f"prediction is zero or negative on {int(not_positive.sum())} of {result.size} rows "
                      f"(min {result.min()!r}); a step time must be > 0"
                      f"{_row_example(program, data, int(np.argmax(not_positive)))}"), True
    return result, None, False


def _row_example(program: CheckedProgram, data: TrainingData, row: int) -> str:
    """The features the program reads, on one offending row: what a mutation needs to fix it."""
    values = ", ".join(f"{name}={data.features[name][row]:.6g}" for name in program.features_used)
    return f"; first such row: {values}" if values else ""


def _scored(prediction: np.ndarray, program: CheckedProgram, data: TrainingData,
            settings: EvaluatorSettings, fitted_text: str, refitted: bool) -> Evaluation:
    ape = abs_pct_errors(data.target, prediction)
    regime = data.regime[scored_mask(data.target)]
    mape = float(np.mean(ape)) if ape.size else float("nan")
    per_regime, means = {}, []
    for index, key in enumerate(REGIME_METRICS):
        in_regime = ape[regime == index]
        per_regime[key] = float(np.mean(in_regime)) if in_regime.size else float("nan")
        means.append(per_regime[key] if in_regime.size else -math.inf)
    if not math.isfinite(mape):
        return _failed("no scored rows (every target is missing or not positive)",
                       program.num_operations, fitted_text, refused=False)
    error_regime = int(np.argmax(means))
    score = -min(mape, MAPE_CAP) - settings.lam * program.num_operations
    metrics = {
        "combined_score": score, "mape": mape, **per_regime,
        "num_operations": program.num_operations, "error_regime": error_regime,
        "refused": 0, "failed": 0, "constants_refitted": int(refitted),
    }
    regimes = ", ".join(f"{REGIMES[i]} {_pct(per_regime[k])}" for i, k in enumerate(REGIME_METRICS))
    summary = (f"training MAPE {_pct(mape)} ({regimes}) with {program.num_operations} operations; "
               f"worst on {REGIMES[error_regime]} steps; score {score:.6g}"
               + ("; constants refitted" if refitted else ""))
    return Evaluation(metrics, fitted_text, None, summary)


def _failed(reason: str, num_operations: int, fitted_text: str | None, *, refused: bool) -> Evaluation:
    nan = float("nan")
    metrics = {
        "combined_score": FAILURE_SCORE, "mape": nan, **{key: nan for key in REGIME_METRICS},
        "num_operations": num_operations, "error_regime": 0,
        "refused": int(refused), "failed": 1, "constants_refitted": 0,
    }
    return Evaluation(metrics, fitted_text, reason, f"failed: {reason}")


def _pct(fraction: float) -> str:
    return "n/a" if math.isnan(fraction) else f"{100 * fraction:.2f}%"


# ---- OpenEvolve seam -------------------------------------------------------------------------------
# OpenEvolve calls evaluate(program_path) in worker processes. The data is loaded once per process,
# from the configuration set by configure() (inherited under fork) or, failing that, from the JSON
# file named by $STEPFORMULA_EVALUATOR_CONFIG (works under spawn too).


@dataclass(frozen=True)
class AdapterConfig:
    """Where the training rows are and how to score programs on them."""

    data_path: str
    target: str
    feature_names: tuple[str, ...]
    settings: EvaluatorSettings

    def write(self, path: str | os.PathLike) -> None:
        payload = {"data_path": self.data_path, "target": self.target,
                   "feature_names": list(self.feature_names), "settings": self.settings.to_dict()}
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")

    @classmethod
    def read(cls, path: str | os.PathLike) -> AdapterConfig:
        try:
            payload = json.loads(Path(path).read_text())
            return cls(str(payload["data_path"]), str(payload["target"]), tuple(payload["feature_names"]),
                       EvaluatorSettings.from_dict(payload["settings"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(path, f"evaluator configuration cannot be read: {e}") from None


_config: AdapterConfig | None = None
_loaded: tuple[AdapterConfig, TrainingData] | None = None


def configure(config: AdapterConfig | None) -> None:
    """Set (or with None, clear) the configuration used by evaluate_program_path in this process."""
    global _config, _loaded
    _config, _loaded = config, None


def load_training_data(path: str | os.PathLike, target: str, feature_names: Sequence[str], *,
                       decode_below: float, prefill_at_least: float) -> TrainingData:
    """Read a split parquet (one column per available feature, plus the target) into TrainingData."""
    import pandas as pd

    columns = [*feature_names, target]
    try:
        frame = pd.read_parquet(path, columns=columns)
    except (OSError, ValueError, KeyError) as e:
        raise InputError(path, f"cannot read columns {columns}: {e}") from None
    features = {name: frame[name].to_numpy(dtype=np.float64, na_value=np.nan) for name in feature_names}
    return TrainingData.from_arrays(features, frame[target].to_numpy(dtype=np.float64, na_value=np.nan),
                                    feature_names=feature_names, decode_below=decode_below,
                                    prefill_at_least=prefill_at_least, source=str(path))


def configured_data() -> tuple[AdapterConfig, TrainingData]:
    """The configuration and its training rows, loaded on first use in this process."""
    global _loaded
    config = _config
    if config is None:
        path = os.environ.get(CONFIG_ENV_VAR)
        if not path:
            raise InputError(CONFIG_ENV_VAR, "evaluator not configured: call configure() or set the variable "
                                             "to an AdapterConfig JSON file")
        config = AdapterConfig.read(path)
    if _loaded is None or _loaded[0] != config:
        data = load_training_data(config.data_path, config.target, config.feature_names,
                                  decode_below=config.settings.decode_below,
                                  prefill_at_least=config.settings.prefill_at_least)
        _loaded = (config, data)
    return _loaded


def evaluate_program_path(program_path: str):
    """OpenEvolve's evaluate(program_path) -> EvaluationResult. A bad program gives a failure result;
    only a missing or broken configuration raises (InputError)."""
    config, data = configured_data()
    limit = config.settings.limits.max_chars
    try:
        with open(program_path, encoding="utf-8", errors="replace") as handle:
            text = handle.read(limit + 1)  # one past the limit is enough for the checker to refuse it
    except OSError as e:
        return _failed(f"cannot read program file: {e}", config.settings.limits.max_operations, None,
                       refused=True).to_openevolve()
    return evaluate_prepared(text, data, config.settings).to_openevolve()
