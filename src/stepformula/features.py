"""The 18 features and the two targets of a step, and the manifest that says what each is.

Targets:
* `duration_us` = `step.duration_us`: what the BLIS study modelled. It is the scheduler's CPU
  time for one `schedule()` call, not the GPU step (TRACE_FORMAT.md §0). Kept so results compare
  with the study's published numbers.
* `period_us` = start-to-start gap to the next step, only where the next sampled row is step
  id + 1 (the real engine-iteration period); missing otherwise.

Hardware under tensor parallelism: `peak_flops_bf16` and `peak_bandwidth` are the per-GPU peaks
times TP. With TP each GPU holds 1/TP of the weights and does 1/TP of the FLOPs, and all TP
GPUs run the step at once, so the group acts as one device with TP times the peaks; a roofline
time is then total FLOPs (or bytes) over the aggregate. Per-GPU peaks would make every model look
TP times slower, and the formula would have to learn TP from nowhere (TP is not a feature).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .facts import Facts
from .traces import STEP_ATTRIBUTES

TARGETS = ("duration_us", "period_us")
IDENTITY = ["experiment", "model", "workload", "tp", "step_id", "start_ns"]

# name -> (unit, how it is derived). Order is the seed's.
FEATURES: dict[str, tuple[str, str]] = {
    "prefill_tokens": ("tokens", "batch.prefill_tokens: newly computed prompt tokens this step"),
    "decode_tokens": ("tokens", "batch.decode_tokens: tokens of requests that already have output"),
    "scheduled_tokens": ("tokens", "batch.scheduled_tokens = prefill_tokens + decode_tokens"),
    "num_prefill_reqs": ("requests", "batch.num_prefill_reqs"),
    "num_decode_reqs": ("requests", "batch.num_decode_reqs"),
    "kv_mean": ("tokens", "kv_sum / queue.running_depth (0 when nothing runs): a mean over "
                          "running requests of block-granular KV, not of exact context lengths"),
    "kv_max": ("tokens", "max per-request KV length; needs per-request lengths"),
    "kv_min": ("tokens", "min per-request KV length; needs per-request lengths"),
    "kv_std": ("tokens", "population std of per-request KV length; needs per-request lengths"),
    "kv_sum": ("tokens", "(kv.blocks_total_gpu - kv.blocks_free_gpu) x block size: KV tokens "
                         "held in the GPU pool, block-granular, including still-referenced "
                         "prefix-cache blocks"),
    "hidden_dim": ("dimensions", "model facts: hidden size"),
    "num_layers": ("layers", "model facts: transformer layers"),
    "num_heads": ("heads", "model facts: attention (query) heads"),
    "intermediate_dim": ("dimensions", "model facts: MLP intermediate size"),
    "peak_flops_bf16": ("FLOP/s", "hardware facts: per-GPU dense BF16 peak x TP "
                                  "(aggregate of the tensor-parallel group)"),
    "peak_bandwidth": ("bytes/s", "hardware facts: per-GPU HBM bandwidth x TP "
                                  "(aggregate of the tensor-parallel group)"),
    "num_experts": ("experts", "model facts: experts per MoE layer (1 for dense)"),
    "active_experts": ("experts", "model facts: experts active per token (1 for dense)"),
}
PER_REQUEST_FEATURES = ("kv_max", "kv_min", "kv_std")
NO_PER_REQUEST_REASON = ("the step tables and BATCH_SUMMARY events carry no per-request KV "
                         "lengths (only pool totals), so this cannot be computed exactly; it is "
                         "left out rather than invented")


def step_period_us(steps: pd.DataFrame) -> pd.Series:
    """Start-to-start gap (µs) to the next row where that row is exactly the next step id.

    Rows must be sorted by (experiment, step_id). A larger id gap would average over unobserved
    steps and over idle time, when the engine does not call schedule() at all.
    """
    by_experiment = steps.groupby("experiment", sort=False)
    next_id = by_experiment["step_id"].shift(-1)
    next_start = by_experiment["start_ns"].shift(-1)
    consecutive = next_id == steps["step_id"] + 1
    period = (next_start - steps["start_ns"]) / 1000.0
    return period.where(consecutive).astype(float)


def build_features(steps: pd.DataFrame, facts: Facts, kv_block_tokens: int) -> pd.DataFrame:
    """One row per step: identity, the available features (float64) and both targets."""
    rows = steps[IDENTITY].copy()
    for name in ("prefill_tokens", "decode_tokens", "scheduled_tokens", "num_prefill_reqs",
                 "num_decode_reqs"):
        rows[name] = steps[name].astype(float)
    kv_sum = (steps["kv_blocks_total"] - steps["kv_blocks_free"]).astype(float) * kv_block_tokens
    running = steps["running_depth"].astype(float)
    rows["kv_mean"] = np.where(running > 0, kv_sum / running.where(running > 0, 1.0), 0.0)
    rows["kv_sum"] = kv_sum
    model_facts = {name: facts.model(name) for name in steps["model"].unique()}
    for name in ("hidden_dim", "num_layers", "num_heads", "intermediate_dim", "num_experts",
                 "active_experts"):
        rows[name] = steps["model"].map({m: float(getattr(f, name))
                                         for m, f in model_facts.items()})
    tp = steps["tp"].astype(float)
    rows["peak_flops_bf16"] = facts.hardware.peak_flops_bf16 * tp
    rows["peak_bandwidth"] = facts.hardware.peak_bandwidth * tp
    rows["duration_us"] = steps["duration_us"].astype(float)
    rows["period_us"] = step_period_us(steps)
    ordered = IDENTITY + [f for f in FEATURES if f in rows.columns] + list(TARGETS)
    return rows[ordered]


def available_features(manifest: dict) -> list[str]:
    """Names of the features a program may read, in the manifest's order."""
    return [f["name"] for f in manifest["features"] if f["available"]]


def build_manifest(rows: pd.DataFrame, kv_block_tokens: int, inputs: list[str]) -> dict:
    """What every feature is, its unit, how it was derived, whether it is available, its range."""
    features = []
    for name, (unit, derivation) in FEATURES.items():
        entry = {"name": name, "unit": unit, "derivation": derivation,
                 "available": name in rows.columns}
        if name in rows.columns:
            entry["min"] = float(rows[name].min())
            entry["max"] = float(rows[name].max())
        else:
            entry["why_unavailable"] = NO_PER_REQUEST_REASON
        features.append(entry)
    experiments = {}
    for experiment, group in rows.groupby("experiment", sort=True):
        experiments[experiment] = {
            "model": str(group["model"].iloc[0]), "workload": str(group["workload"].iloc[0]),
            "tp": int(group["tp"].iloc[0]), "steps": int(len(group)),
            "period_rows": int(group["period_us"].notna().sum())}
    return {
        "inputs": inputs,
        "kv_block_tokens": kv_block_tokens,
        "features": features,
        "targets": [
            {"name": "duration_us", "unit": "µs", "rows": int(rows["duration_us"].notna().sum()),
             "derivation": f"{STEP_ATTRIBUTES['duration_us']}: scheduler CPU time of one "
                           "schedule() call (the BLIS study's target), not the GPU step"},
            {"name": "period_us", "unit": "µs", "rows": int(rows["period_us"].notna().sum()),
             "derivation": "next step's step.ts_start_ns - this step's, only when the next "
                           "sampled row is step id + 1: the real engine-iteration period"},
        ],
        "tp_aggregation": "peak_flops_bf16 and peak_bandwidth are per-GPU peaks x TP: the "
                          "tensor-parallel group runs the step together on 1/TP of the weights "
                          "each, so it acts as one device with TP times the peaks",
        "experiments": experiments,
    }
