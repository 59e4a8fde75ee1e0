"""Test helper (not tests): write BLIS step rows as a spec-conformant OTLP JSON-Lines traces.json.

Follows /work/shared/data/blis-steps/TRACE_FORMAT.md sections 1, 2 and 8:

* one complete JSON object per line (an OTLP export batch), spans spread over several lines, and
  the lines not in step order (export order is only roughly step order);
* `intValue` as a decimal STRING, `doubleValue` as a JSON number (a whole-valued double such as
  0 is written without a decimal point);
* several `step.BATCH_SUMMARY` events per `scheduler_steps_<n>` span (scope `vllm.scheduler.step`),
  with the span attributes of section 1.1, and a `step.REQUEST_SNAPSHOT` event or two that a
  reader must ignore;
* other scopes mixed in: `vllm.scheduler` `llm_core` spans with `journey.*` events and `vllm.api`
  `llm_request` spans with `api.*` events;
* zero-valued attributes sometimes left out, as proto3 JSON allows;
* optionally a step span exported twice (a collector retry), which a reader must deduplicate.

The reader takes model, TP and workload from the folder name, so write to
`<root>/<experiment id>/traces.json` (see `experiment_path`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

# BATCH_SUMMARY attributes in the order the fork emits them, and their OTLP types.
SUMMARY_ATTRIBUTES = [
    ("step.id", "int"), ("step.ts_start_ns", "int"), ("step.ts_end_ns", "int"),
    ("step.duration_us", "int"), ("queue.running_depth", "int"), ("queue.waiting_depth", "int"),
    ("batch.num_prefill_reqs", "int"), ("batch.num_decode_reqs", "int"),
    ("batch.scheduled_tokens", "int"), ("batch.prefill_tokens", "int"),
    ("batch.decode_tokens", "int"), ("batch.num_finished", "int"),
    ("batch.num_preempted", "int"), ("kv.usage_gpu_ratio", "double"),
    ("kv.blocks_total_gpu", "int"), ("kv.blocks_free_gpu", "int"),
]
# Never zero in a real step, so never left out.
NEVER_OMITTED = {"step.id", "step.ts_start_ns", "step.duration_us", "kv.blocks_total_gpu"}
EPOCH_OFFSET_NS = 1_771_400_000_000_000_000 - 20_000_000_000_000  # epoch minus monotonic


def experiment_path(root: Path, experiment: str) -> Path:
    """Where the study keeps an experiment's traces: `<root>/<experiment id>/traces.json`."""
    folder = Path(root) / experiment
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "traces.json"


def _int(key: str, value: int) -> dict:
    return {"key": key, "value": {"intValue": str(int(value))}}


def _double(key: str, value: float) -> dict:
    value = float(value)
    # A whole-valued double is written as a bare JSON integer, as OTLP/JSON encoders may.
    return {"key": key, "value": {"doubleValue": int(value) if value.is_integer() else value}}


def _string(key: str, value: str) -> dict:
    return {"key": key, "value": {"stringValue": value}}


def _hex(rng: random.Random, digits: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(digits))


def _summary_event(row: pd.Series, omit_zeros: bool) -> dict:
    attributes = []
    for key, kind in SUMMARY_ATTRIBUTES:
        value = row[key]
        if omit_zeros and key not in NEVER_OMITTED and float(value) == 0.0:
            continue  # proto3: a zero-valued attribute may be left out
        attributes.append(_int(key, value) if kind == "int" else _double(key, value))
    return {"timeUnixNano": str(int(row["step.ts_end_ns"]) + EPOCH_OFFSET_NS + 4_000),
            "name": "step.BATCH_SUMMARY", "attributes": attributes}


def _snapshot_event(row: pd.Series, request: int) -> dict:
    """A step.REQUEST_SNAPSHOT (section 6.2): joins to the summary by step.id; not a step row."""
    return {"timeUnixNano": str(int(row["step.ts_end_ns"]) + EPOCH_OFFSET_NS + 9_000),
            "name": "step.REQUEST_SNAPSHOT",
            "attributes": [_int("step.id", row["step.id"]),
                           _string("request.id", f"cmpl-{request:04d}-0"),
                           _string("request.phase", "DECODE"),
                           _int("request.num_prompt_tokens", 512),
                           _int("request.num_computed_tokens", 530),
                           _int("request.num_output_tokens", 18),
                           _int("request.scheduled_tokens_this_step", 1),
                           _int("kv.blocks_allocated_gpu", 34),
                           _int("kv.blocks_cached_gpu", 32)]}


def _step_span(rows: pd.DataFrame, sequence: int, rng: random.Random, omit_zeros: bool,
               snapshots: bool) -> dict:
    first, last = int(rows["step.id"].iloc[0]), int(rows["step.id"].iloc[-1])
    events = []
    for position, (_, row) in enumerate(rows.iterrows()):
        # proto3 omission on every other event, so both forms are read.
        events.append(_summary_event(row, omit_zeros and position % 2 == 1))
        if snapshots and position == 0:
            events.extend(_snapshot_event(row, r) for r in range(2))
    start = int(rows["step.ts_start_ns"].iloc[0]) + EPOCH_OFFSET_NS
    end = int(rows["step.ts_end_ns"].iloc[-1]) + EPOCH_OFFSET_NS + 50_000
    return {"traceId": _hex(rng, 32), "spanId": _hex(rng, 16),
            "name": f"scheduler_steps_{sequence}", "kind": 1,
            "startTimeUnixNano": str(start), "endTimeUnixNano": str(end),
            "attributes": [_int("scheduler.span_sequence", sequence),
                           _int("scheduler.step_range_start", first),
                           _int("scheduler.closure_interval", 10),
                           _int("scheduler.step_range_end", last)],
            "events": events, "status": {}}


def _journey_span(rng: random.Random, request: int, step: int, monotonic_ns: int) -> dict:
    """An engine-side llm_core span (scope vllm.scheduler) with journey events."""
    trace_id = _hex(rng, 32)
    events = []
    for offset, kind in enumerate(("QUEUED", "SCHEDULED")):
        ts = monotonic_ns + offset * 1_000_000
        events.append({
            "timeUnixNano": str(ts + EPOCH_OFFSET_NS), "name": f"journey.{kind}",
            "attributes": [_string("event.type", kind),
                           # a whole-valued double, written without a decimal point
                           _double("ts.monotonic", float(ts // 1_000_000_000)),
                           _int("ts.monotonic_ns", ts),
                           _int("scheduler.step", step + offset),
                           _string("phase", "WAITING" if kind == "QUEUED" else "PREFILL"),
                           _int("prefill.total_tokens", 700),
                           _int("decode.max_tokens", 256)]
                          + ([_string("schedule.kind", "FIRST")] if kind == "SCHEDULED" else [])})
    return {"traceId": trace_id, "spanId": _hex(rng, 16), "parentSpanId": _hex(rng, 16),
            "name": "llm_core", "kind": 1,
            "startTimeUnixNano": str(monotonic_ns + EPOCH_OFFSET_NS),
            "endTimeUnixNano": str(monotonic_ns + EPOCH_OFFSET_NS + 9_000_000),
            "attributes": [_string("gen_ai.request.id", f"cmpl-{request:04d}-0")],
            "events": events, "status": {}}


def _api_span(rng: random.Random, request: int, monotonic_ns: int) -> dict:
    """An API-server llm_request span (scope vllm.api)."""
    events = [{"timeUnixNano": str(monotonic_ns + EPOCH_OFFSET_NS + i * 500_000), "name": name,
               "attributes": [_double("event.ts.monotonic", (monotonic_ns + i * 500_000) / 1e9)]}
              for i, name in enumerate(("api.ARRIVED", "api.HANDOFF_TO_CORE"))]
    return {"traceId": _hex(rng, 32), "spanId": _hex(rng, 16), "name": "llm_request", "kind": 1,
            "startTimeUnixNano": str(monotonic_ns + EPOCH_OFFSET_NS),
            "endTimeUnixNano": str(monotonic_ns + EPOCH_OFFSET_NS + 20_000_000),
            "attributes": [_string("gen_ai.request.id", f"cmpl-{request:04d}"),
                           _int("gen_ai.usage.prompt_tokens", 700)],
            "events": events, "status": {}}


def _resource() -> dict:
    return {"attributes": [_string("service.name", "vllm-inference-perf")]}


def write_traces_json(rows: pd.DataFrame, path: str | Path, *, steps_per_span: int = 10,
                      duplicate_spans: bool = False, mix_other_scopes: bool = True,
                      omit_zeros: bool = True, snapshots: bool = True, spans_per_line: int = 3,
                      seed: int = 0) -> Path:
    """Write `rows` (BLIS step-table columns: `step.id`, `batch.*`, ...) to `path` as OTLP
    JSON Lines. Returns the path. Deterministic for a given seed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = rows.sort_values("step.id").reset_index(drop=True)
    spans = [_step_span(rows.iloc[i:i + steps_per_span], sequence, rng, omit_zeros,
                        snapshots and sequence <= 2)
             for sequence, i in enumerate(range(0, len(rows), steps_per_span), start=1)]
    lines = []
    for i in range(0, len(spans), spans_per_line):
        batch = spans[i:i + spans_per_line]
        scopes = [{"scope": {"name": "vllm.scheduler.step"}, "spans": batch}]
        resources = []
        if mix_other_scopes:
            first = batch[0]["events"][0]["attributes"]
            step = int(next(a["value"]["intValue"] for a in first if a["key"] == "step.id"))
            monotonic = int(rows["step.ts_start_ns"].iloc[min(i * steps_per_span, len(rows) - 1)])
            # engine-side journeys in the same scope list, before the step spans
            scopes.insert(0, {"scope": {"name": "vllm.scheduler"},
                              "spans": [_journey_span(rng, i + r, step, monotonic)
                                        for r in range(2)]})
            # API-server spans as a second resource of the same export
            resources.append({"resource": _resource(), "scopeSpans": [
                {"scope": {"name": "vllm.api"}, "spans": [_api_span(rng, i, monotonic)]}]})
        resources.insert(0, {"resource": _resource(), "scopeSpans": scopes})
        lines.append({"resourceSpans": resources})
    if mix_other_scopes:  # a line with no step span at all
        lines.append({"resourceSpans": [{"resource": _resource(), "scopeSpans": [
            {"scope": {"name": "vllm.api"},
             "spans": [_api_span(rng, 9999, int(rows["step.ts_start_ns"].iloc[0]))]}]}]})
    if duplicate_spans:  # a collector retry re-exports some step spans on later lines
        again = [spans[j] for j in range(0, len(spans), 3)]
        lines.append({"resourceSpans": [{"resource": _resource(), "scopeSpans": [
            {"scope": {"name": "vllm.scheduler.step"}, "spans": again}]}]})
    rng.shuffle(lines)  # export order is only roughly step order
    with path.open("w", encoding="utf-8") as out:
        for line in lines:
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
            if rng.random() < 0.2:
                out.write("\n")  # blank lines are allowed and skipped
    return path


def blis_rows(experiment: str, n: int, *, first_step: int = 1, seed: int = 0) -> pd.DataFrame:
    """`n` made-up but consistent BLIS step-table rows of `experiment` (a study folder name such
    as `20260101-000000-llama-2-70b-tp4-general`), in the parquet's column layout. Step ids mostly
    advance by 2-20 (sampling) with a consecutive pair (id + 1) every fourth row; two rows in three
    are pure decode; the first row has nothing running, schedules nothing and has a KV usage
    ratio of exactly 0."""
    import re

    match = re.match(r"^\d{8}-\d{6}-(?P<model>.+)-tp(?P<tp>\d+)-(?P<workload>[a-z0-9_]+)$",
                     experiment)
    rng = random.Random(seed)
    records = []
    step, start = first_step, 20_000_000_000_000 + seed * 1_000_000_000
    total = 31_356
    for i in range(n):
        duration = rng.randint(150, 1500)
        decode = rng.randint(1, 60)
        prefill = 0 if i % 3 else rng.randint(16, 1900)
        if i == 0:
            prefill = decode = 0  # nothing running yet: a step that scheduled nothing
        free = total if i == 0 else total - rng.randint(1, 4000)
        records.append({
            "step.id": step, "step.ts_start_ns": start,
            "step.ts_end_ns": start + duration * 1000 + rng.randint(0, 999),
            "step.duration_us": duration,
            "queue.running_depth": 0 if i == 0 else decode + (prefill > 0),
            "queue.waiting_depth": rng.choice([0, 0, 0, 2]),
            "batch.num_prefill_reqs": int(prefill > 0), "batch.num_decode_reqs": decode,
            "batch.scheduled_tokens": prefill + decode, "batch.prefill_tokens": prefill,
            "batch.decode_tokens": decode, "batch.num_finished": rng.choice([0, 0, 1]),
            "batch.num_preempted": 0,
            "kv.usage_gpu_ratio": round(1 - free / total, 6),
            "kv.blocks_total_gpu": total, "kv.blocks_free_gpu": free,
        })
        gap = 1 if i % 4 == 1 else rng.randint(2, 20)
        step += gap
        start += gap * 18_000_000 + rng.randint(0, 500_000)
    table = pd.DataFrame.from_records(records)
    table = table.astype({key: "Int64" if kind == "int" else float
                          for key, kind in SUMMARY_ATTRIBUTES})
    table["experiment_id"] = experiment
    if match:
        table["model"] = match["model"]
        table["workload"] = match["workload"]
        table["tp"] = int(match["tp"])
    return table
