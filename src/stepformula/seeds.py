"""The three seed programs every evolution run starts from.

(a) blackbox: the study's 2-feature linear model, b0 + b1*prefill_tokens + b2*decode_tokens;
(b) roofline: the analytical decomposition written in the program language (GEMM time as the
    max of compute and weight-read time, attention as the max of compute and KV-read time, one
    scale and one offset), from the features alone;
(c) random: a linear model of 3 features drawn with the run's seed.

Starting constants of (a) and (c) are least squares on the training rows, so each seed starts at
its own best; the evaluator refits them for MAPE anyway. Seeds must be valid programs: each is
checked here, so a broken seed fails the stage before any search starts.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import numpy as np

from .program import check_program

HEADER = '"""Predicts the time of one vLLM engine step in microseconds."""\nimport numpy as np\n\n'
SEED_NAMES = ("blackbox", "roofline", "random3")


def _num(value: float) -> str:
    return repr(float(value))


def _linear(names: Sequence[str], coefficients: Sequence[float], intercept: float) -> str:
    terms = " + ".join(f'{_num(c)} * f["{n}"]' for n, c in zip(names, coefficients))
    return f"{HEADER}def predict(f):\n    return {_num(intercept)} + {terms}\n"


def _least_squares(features: Mapping[str, np.ndarray], target: np.ndarray,
                   names: Sequence[str]) -> tuple[float, list[float]]:
    scored = np.isfinite(target) & (target > 0)
    X = np.column_stack([np.ones(int(scored.sum()))] + [features[n][scored] for n in names])
    solution, *_ = np.linalg.lstsq(X, target[scored], rcond=None)
    return float(solution[0]), [float(v) for v in solution[1:]]


def blackbox_seed(features: Mapping[str, np.ndarray], target: np.ndarray) -> str:
    names = ["prefill_tokens", "decode_tokens"]
    intercept, coefficients = _least_squares(features, target, names)
    return _linear(names, coefficients, intercept)


def roofline_seed(features: Mapping[str, np.ndarray], target: np.ndarray) -> str:
    """Weights: 4*d^2 attention projections + 3*d*I MLP per expert, BF16; KV: 2*L*d per token
    (an upper bound under grouped-query attention: kv heads are not among the features)."""
    median = float(np.median(target[np.isfinite(target) & (target > 0)]))
    return (
        f"{HEADER}def predict(f):\n"
        '    d = f["hidden_dim"]\n'
        "    attention = 4.0 * d * d\n"
        '    mlp = 3.0 * d * f["intermediate_dim"]\n'
        '    active_weights = f["num_layers"] * (attention + mlp * f["active_experts"])\n'
        '    weight_bytes = 2.0 * f["num_layers"] * (attention + mlp * f["num_experts"])\n'
        '    gemm = np.maximum(2.0 * f["scheduled_tokens"] * active_weights / f["peak_flops_bf16"],\n'
        '                      weight_bytes / f["peak_bandwidth"])\n'
        '    kv_elements = 2.0 * f["num_layers"] * d * f["kv_sum"]\n'
        '    attention_time = np.maximum(2.0 * kv_elements / f["peak_flops_bf16"],\n'
        '                                2.0 * kv_elements / f["peak_bandwidth"])\n'
        f"    return {_num(0.05 * median)} + 1000000.0 * (gemm + attention_time)\n")


def random_seed_program(features: Mapping[str, np.ndarray], target: np.ndarray,
                        feature_names: Sequence[str], seed: int) -> str:
    """3 distinct features drawn with `random.Random(seed)` from the available ones, in
    manifest order, so the draw depends on the seed alone."""
    names = random.Random(f"random3:{seed}").sample(list(feature_names), 3)
    intercept, coefficients = _least_squares(features, target, names)
    return _linear(names, coefficients, intercept)


def seed_programs(features: Mapping[str, np.ndarray], target: np.ndarray,
                  feature_names: Sequence[str], seed: int) -> dict[str, str]:
    """The three seeds by name, each checked against the available features."""
    programs = {
        "blackbox": blackbox_seed(features, target),
        "roofline": roofline_seed(features, target),
        "random3": random_seed_program(features, target, feature_names, seed),
    }
    for text in programs.values():
        check_program(text, feature_names)
    return programs
