"""Reading real vLLM step data into one canonical row per sampled scheduler step.

Two real forms are read, and both give the same rows:

* a BLIS-style step table (parquet or CSV) with `step.*`, `batch.*`, `queue.*`, `kv.*` columns
  plus `experiment_id`, `model`, `workload`, `tp` (the form of the study's enriched_steps.parquet);
* raw OTLP JSON-Lines `traces.json` (see ../shared/data/blis-steps/TRACE_FORMAT.md), of which only
  `step.BATCH_SUMMARY` events are kept. Such a file has no model or workload in it: they come from
  the experiment folder's name (`<date>-<time>-<model>-tp<N>-<workload>`, the study's layout).

Every reader validates before it returns, so a stage never writes output from bad input.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError

# The trace attribute of each canonical column (the BLIS table uses the same keys as columns).
STEP_ATTRIBUTES = {
    "step_id": "step.id",
    "start_ns": "step.ts_start_ns",
    "end_ns": "step.ts_end_ns",
    "duration_us": "step.duration_us",
    "running_depth": "queue.running_depth",
    "waiting_depth": "queue.waiting_depth",
    "num_prefill_reqs": "batch.num_prefill_reqs",
    "num_decode_reqs": "batch.num_decode_reqs",
    "scheduled_tokens": "batch.scheduled_tokens",
    "prefill_tokens": "batch.prefill_tokens",
    "decode_tokens": "batch.decode_tokens",
    "num_finished": "batch.num_finished",
    "num_preempted": "batch.num_preempted",
    "kv_usage_ratio": "kv.usage_gpu_ratio",
    "kv_blocks_total": "kv.blocks_total_gpu",
    "kv_blocks_free": "kv.blocks_free_gpu",
}
IDENTITY_COLUMNS = ["experiment", "model", "workload", "tp"]
STEP_COLUMNS = IDENTITY_COLUMNS + list(STEP_ATTRIBUTES)
FLOAT_COLUMNS = {"kv_usage_ratio"}
# Attributes a step cannot be read without, none of which is ever zero in a real step; the
# others default to 0, because proto3 JSON may leave out a zero-valued attribute. Token counts are
# zero in most steps (prefill_tokens in about two thirds of them), so they cannot be required.
REQUIRED_ATTRIBUTES = ["step.id", "step.ts_start_ns", "step.duration_us", "kv.blocks_total_gpu"]
EXPERIMENT_NAME = re.compile(r"^\d{8}-\d{6}-(?P<model>.+)-tp(?P<tp>\d+)-(?P<workload>[a-z0-9_]+)$")
BATCH_SUMMARY = "step.BATCH_SUMMARY"


def read_steps(path: str | Path, min_steps_per_experiment: int = 10) -> pd.DataFrame:
    """Read one input (step table or traces.json) into validated canonical step rows."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file does not exist")
    if path.name.endswith(".json") or path.name.endswith(".jsonl"):
        rows = read_traces_json(path)
    elif path.suffix in (".parquet", ".csv"):
        rows = read_step_table(path)
    else:
        raise InputError(path, "unknown step data format: expected .parquet, .csv or traces.json")
    return validate_steps(rows, path, min_steps_per_experiment)


def read_step_table(path: Path) -> pd.DataFrame:
    """A BLIS step table: one row per sampled step, trace attribute names as columns."""
    try:
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # pyarrow and the CSV parser raise many types; name the file
        raise InputError(path, f"cannot be read as a step table: {exc}") from exc
    wanted = ["experiment_id", "model", "workload", "tp"] + list(STEP_ATTRIBUTES.values())
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise InputError(path, f"missing column(s): {', '.join(missing)}")
    rows = pd.DataFrame({
        "experiment": table["experiment_id"].astype(str),
        "model": table["model"].astype(str),
        "workload": table["workload"].astype(str),
        "tp": table["tp"],
    })
    for column, attribute in STEP_ATTRIBUTES.items():
        rows[column] = table[attribute]
    return rows


def experiment_identity(experiment: str, source: Path) -> dict[str, object]:
    """Model, TP and workload from a study experiment name such as
    `20260217-202857-llama-2-70b-tp4-general`."""
    match = EXPERIMENT_NAME.match(experiment)
    if match is None:
        raise InputError(source, f"experiment folder name {experiment!r} is not "
                                 "<yyyymmdd>-<hhmmss>-<model>-tp<N>-<workload>")
    return {"experiment": experiment, "model": match["model"], "workload": match["workload"],
            "tp": int(match["tp"])}


def _any_value(value: dict, where: str, path: Path):
    """Decode an OTLP/JSON AnyValue: intValue arrives as a decimal string."""
    if "intValue" in value:
        try:
            return int(value["intValue"])
        except (TypeError, ValueError):
            raise InputError(path, f"{where}: intValue {value['intValue']!r} is not an integer")
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return bool(value["boolValue"])
    return None


def read_traces_json(path: Path) -> pd.DataFrame:
    """Step rows from OTLP JSON-Lines: every `step.BATCH_SUMMARY` event, deduplicated on
    (experiment, step id, start time) because the collector may export a span twice."""
    identity = experiment_identity(path.parent.name, path)
    records = []
    with path.open("r", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                export = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(path, f"line {number} is not a complete JSON object "
                                       f"(truncated?): {exc.msg} at column {exc.colno}") from None
            if not isinstance(export, dict):
                raise InputError(path, f"line {number} is not a JSON object")
            for resource in export.get("resourceSpans", []):
                for scope in resource.get("scopeSpans", []):
                    for span in scope.get("spans", []):
                        for event in span.get("events", []):
                            if event.get("name") != BATCH_SUMMARY:
                                continue
                            where = f"line {number}, {BATCH_SUMMARY} event"
                            attributes = {kv.get("key"): _any_value(kv.get("value", {}), where, path)
                                          for kv in event.get("attributes", [])}
                            lacking = [a for a in REQUIRED_ATTRIBUTES if a not in attributes]
                            if lacking:
                                raise InputError(path, f"{where} lacks attribute(s) "
                                                       f"{', '.join(lacking)}")
                            records.append({column: attributes.get(attribute, 0)
                                            for column, attribute in STEP_ATTRIBUTES.items()})
    if not records:
        raise InputError(path, f"no {BATCH_SUMMARY} events found")
    rows = pd.DataFrame.from_records(records)
    for key, value in identity.items():
        rows.insert(list(identity).index(key), key, value)
    rows = rows.drop_duplicates(subset=["experiment", "step_id", "start_ns"], keep="first")
    return rows


def validate_steps(rows: pd.DataFrame, source: Path, min_steps_per_experiment: int) -> pd.DataFrame:
    """Types, sortedness and sanity of canonical step rows; refuse what a model can't learn from."""
    rows = rows.copy()
    for column in STEP_COLUMNS:
        if column not in rows.columns:
            raise InputError(source, f"missing column {column!r}")
    integer_columns = [c for c in STEP_ATTRIBUTES if c not in FLOAT_COLUMNS] + ["tp"]
    for column in integer_columns + sorted(FLOAT_COLUMNS):
        values = pd.to_numeric(rows[column], errors="coerce")
        bad = values.isna() & rows[column].notna()
        if bad.any():
            raise InputError(source, f"column {column!r} has non-numeric values "
                                     f"(first at row {int(np.flatnonzero(bad.to_numpy())[0])})")
        rows[column] = values
    duration = rows["duration_us"]
    if duration.isna().any():
        raise InputError(source, f"{int(duration.isna().sum())} step(s) have a missing (NaN) "
                                 "step.duration_us")
    if (duration < 0).any():
        first = rows.loc[duration < 0].iloc[0]
        raise InputError(source, f"{int((duration < 0).sum())} step(s) have a negative "
                                 f"step.duration_us (first: experiment {first['experiment']}, "
                                 f"step {first['step_id']})")
    for column in integer_columns:
        if rows[column].isna().any():
            raise InputError(source, f"column {column!r} has missing values")
        if (rows[column] < 0).any():
            raise InputError(source, f"column {column!r} has negative values")
        rows[column] = rows[column].astype(np.int64)
    rows["kv_usage_ratio"] = rows["kv_usage_ratio"].astype(float)
    if rows["experiment"].isna().any() or rows["model"].isna().any():
        raise InputError(source, "experiment or model names are missing")
    tokens = rows["prefill_tokens"] + rows["decode_tokens"]
    if (tokens != rows["scheduled_tokens"]).any():
        n = int((tokens != rows["scheduled_tokens"]).sum())
        raise InputError(source, f"{n} step(s) have prefill_tokens + decode_tokens != "
                                 "scheduled_tokens")
    if rows.duplicated(["experiment", "step_id"]).any():
        raise InputError(source, "a step id appears twice within one experiment "
                                 "with different start times")
    sizes = rows.groupby("experiment").size()
    small = sizes[sizes < min_steps_per_experiment]
    if len(small):
        raise InputError(source, f"experiment(s) with fewer than {min_steps_per_experiment} steps: "
                                 + ", ".join(f"{e} ({n})" for e, n in small.items()))
    for column in ("model", "workload", "tp"):
        if (rows.groupby("experiment")[column].nunique() > 1).any():
            raise InputError(source, f"an experiment has more than one {column}")
    return rows[STEP_COLUMNS].sort_values(["experiment", "step_id"]).reset_index(drop=True)


def read_all(paths: list[str | Path], min_steps_per_experiment: int = 10) -> pd.DataFrame:
    """Every input's rows together; an experiment may come from only one input."""
    if not paths:
        raise InputError("extract.inputs", "no step data inputs are listed")
    frames = []
    seen: dict[str, Path] = {}
    for path in paths:
        rows = read_steps(path, min_steps_per_experiment)
        for experiment in rows["experiment"].unique():
            if experiment in seen:
                raise InputError(path, f"experiment {experiment} is also in {seen[experiment]}")
            seen[experiment] = Path(path)
        frames.append(rows)
    return pd.concat(frames, ignore_index=True).sort_values(
        ["experiment", "step_id"]).reset_index(drop=True)
