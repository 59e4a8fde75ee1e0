"""Evaluation time of a realistic 30-operation program, without and with the constant refit.

Run on demand: `python benchmarks/bench_evaluator.py [--repeats N]`. Uses the train splits
data/split/train/<target>.parquet when they exist; otherwise builds equivalent rows from the raw
step table (the first 60% of each experiment by step id). Goals: <= 5 ms without refit,
<= 100 ms with refit, on ~12k duration_us rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from stepformula.evaluator import EvaluatorSettings, TrainingData, evaluate_prepared, load_training_data
from stepformula.program import check_program

ROOT = Path(__file__).resolve().parents[1]
RAW_STEPS = Path("/work/shared/data/blis-steps/steps/enriched_steps_3exp.parquet")
TRAIN_FRACTION = 0.6
# kv_max, kv_min and kv_std cannot be computed from step tables: not available in the shipped data.
FEATURES = ("prefill_tokens", "decode_tokens", "scheduled_tokens", "num_prefill_reqs", "num_decode_reqs",
            "kv_mean", "kv_sum", "hidden_dim", "num_layers", "num_heads", "intermediate_dim",
            "peak_flops_bf16", "peak_bandwidth", "num_experts", "active_experts")

# A roofline-shaped formula of the kind evolution produces: 30 operations, 14 fittable constants.
PROGRAM_30_OPS = '''"""Roofline with per-request overheads."""
import numpy as np


def predict(f):
    tokens = f["scheduled_tokens"]
    hidden = f["hidden_dim"]
    layer_params = 4.0 * hidden * hidden + 3.0 * hidden * f["intermediate_dim"]
    params = f["num_layers"] * layer_params
    compute_us = 2.0e6 * tokens * params / f["peak_flops_bf16"]
    kv_bytes = 4.0 * f["kv_sum"] * hidden * f["num_layers"] / f["num_heads"]
    memory_us = 1.0e6 * (2.0 * params + kv_bytes) / f["peak_bandwidth"]
    attention_us = 0.002 * f["prefill_tokens"] * np.sqrt(f["kv_mean"] + 1.0)
    overhead_us = 150.0 + 2.0 * f["num_decode_reqs"] + 8.0 * f["num_prefill_reqs"]
    busy_us = np.maximum(compute_us, memory_us) + attention_us
    return np.where(tokens > 0, busy_us + overhead_us, overhead_us)
'''


def _raw_rows() -> pd.DataFrame:
    """Features and both targets from the raw step table, in the project's units."""
    raw = pd.read_parquet(RAW_STEPS).sort_values(["experiment_id", "step.id"], kind="stable")
    facts = yaml.safe_load((ROOT / "data" / "models.yaml").read_text())
    gpu = {key: float(value) for key, value in next(iter(facts["hardware"].values())).items()}
    model = raw["model"].map(facts["models"])
    num = lambda column: raw[column].astype("float64")  # noqa: E731
    requests = num("batch.num_prefill_reqs") + num("batch.num_decode_reqs")
    rows = pd.DataFrame({
        "experiment": raw["experiment_id"], "step_id": num("step.id"),
        "prefill_tokens": num("batch.prefill_tokens"), "decode_tokens": num("batch.decode_tokens"),
        "scheduled_tokens": num("batch.scheduled_tokens"),
        "num_prefill_reqs": num("batch.num_prefill_reqs"), "num_decode_reqs": num("batch.num_decode_reqs"),
        "kv_sum": (num("kv.blocks_total_gpu") - num("kv.blocks_free_gpu")) * 16.0,
    })
    rows["kv_mean"] = rows["kv_sum"] / requests.clip(lower=1.0)
    for name in ("hidden_dim", "num_layers", "num_heads", "intermediate_dim", "num_experts", "active_experts"):
        rows[name] = model.map(lambda m, key=name: float(m[key]))
    tp = raw["tp"].astype("float64")
    rows["peak_flops_bf16"] = gpu["peak_flops_bf16"] * tp
    rows["peak_bandwidth"] = gpu["peak_bandwidth"] * tp
    rows["duration_us"] = num("step.duration_us")
    start_ns = num("step.ts_start_ns")
    next_is_consecutive = rows.groupby("experiment")["step_id"].shift(-1) == rows["step_id"] + 1
    next_start_ns = start_ns.groupby(rows["experiment"]).shift(-1)
    rows["period_us"] = np.where(next_is_consecutive, (next_start_ns - start_ns) / 1e3, np.nan)
    return rows.dropna(subset=list(FEATURES)).reset_index(drop=True)


def _first_fraction(rows: pd.DataFrame) -> pd.DataFrame:
    """The first TRAIN_FRACTION of each experiment's rows by step id."""
    kept = [group.iloc[: int(len(group) * TRAIN_FRACTION)] for _, group in rows.groupby("experiment", sort=True)]
    return pd.concat(kept, ignore_index=True)


def training_data(target: str, settings: EvaluatorSettings) -> tuple[TrainingData, str]:
    # The split stage writes data/split/train/<target>.parquet (data/split/<target>/train.parquet
    # was the layout first planned).
    candidates = [ROOT / "data" / "split" / "train" / f"{target}.parquet",
                  ROOT / "data" / "split" / target / "train.parquet"]
    split = next((path for path in candidates if path.exists()), None)
    if split is not None:
        frame_columns = pd.read_parquet(split).columns
        names = [name for name in FEATURES if name in frame_columns]
        return (load_training_data(split, target, names, decode_below=settings.decode_below,
                                   prefill_at_least=settings.prefill_at_least), str(split))
    rows = _raw_rows()
    if target == "period_us":
        rows = rows[rows["period_us"].notna()]
    rows = _first_fraction(rows)
    data = TrainingData.from_arrays({name: rows[name].to_numpy() for name in FEATURES}, rows[target].to_numpy(),
                                    feature_names=FEATURES, decode_below=settings.decode_below,
                                    prefill_at_least=settings.prefill_at_least)
    return data, f"built from {RAW_STEPS.name}"


def _median_ms(function, repeats: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of `function()` (CPU time is robust to a busy machine)."""
    function()  # warm-up: imports, page faults
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    program = check_program(PROGRAM_30_OPS, FEATURES)
    print(f"program: {program.num_operations} operations, {len(program.fittable)} fittable constants; "
          f"median of {args.repeats} runs (wall / CPU)")
    for target in ("duration_us", "period_us"):
        settings = EvaluatorSettings.from_params(params, target)
        data, origin = training_data(target, settings)
        plain = dataclasses.replace(settings, refit=False)
        refit = dataclasses.replace(settings, refit=True)
        fitted_text = evaluate_prepared(PROGRAM_30_OPS, data, refit).fitted_text
        print(f"{target}: {data.n_rows} rows ({origin}); refit budget {settings.max_evaluations} runs "
              f"on <= {settings.max_fit_rows} rows")
        cases = [("no refit", PROGRAM_30_OPS, plain),
                 ("refit, constants as written", PROGRAM_30_OPS, refit),
                 ("refit, constants already fitted", fitted_text, refit)]
        for label, text, case_settings in cases:
            result = evaluate_prepared(text, data, case_settings)
            wall, cpu = _median_ms(lambda: evaluate_prepared(text, data, case_settings), args.repeats)
            print(f"  {label:32s} {wall:7.2f} ms / {cpu:7.2f} ms   MAPE {100 * result.metrics['mape']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
