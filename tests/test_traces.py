"""The step readers: the BLIS step table (parquet, CSV) and raw OTLP traces.json give the same
canonical rows, and every bad input is refused with an InputError naming the file."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from otlp import blis_rows, experiment_path, write_traces_json  # noqa: E402

from stepformula import features, traces  # noqa: E402
from stepformula.errors import InputError  # noqa: E402
from stepformula.facts import load_facts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RAW = REPO / "data" / "raw" / "enriched_steps_3exp.parquet"
FACTS = REPO / "data" / "models.yaml"
EXPERIMENTS = {"20260217-202857-llama-2-70b-tp4-general": 5992,
               "20260217-203421-llama-2-70b-hf-tp4-codegen": 6679,
               "20260218-150304-codellama-34b-tp2-general": 7441}
SYNTHETIC = "20260101-000000-llama-2-70b-tp4-general"


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return pd.read_parquet(RAW)


@pytest.fixture(scope="module")
def steps() -> pd.DataFrame:
    return traces.read_steps(RAW)


@pytest.fixture(scope="module")
def facts():
    return load_facts(FACTS, "H100-SXM-80GB")


def raises_input_error(path: Path, *words: str):
    """Context: an InputError whose source is `path` and whose problem has every word."""
    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(InputError)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            error = self.info.value
            assert str(path) in str(error), f"message does not name the file: {error}"
            for word in words:
                assert word.lower() in error.problem.lower(), f"{word!r} not in {error.problem!r}"
            return handled
    return Check()


# ---------------------------------------------------------------- BLIS step table (parquet, CSV)

def test_parquet_rows_columns_and_order(steps):
    assert len(steps) == 20_112
    assert list(steps.columns) == traces.STEP_COLUMNS
    assert steps.groupby("experiment").size().to_dict() == EXPERIMENTS
    ordered = steps.sort_values(["experiment", "step_id"]).reset_index(drop=True)
    pdt.assert_frame_equal(steps, ordered)
    assert not steps.duplicated(["experiment", "step_id"]).any()
    for column in traces.STEP_ATTRIBUTES:
        expected = np.float64 if column in traces.FLOAT_COLUMNS else np.int64
        assert steps[column].dtype == expected, column
    assert steps["tp"].dtype == np.int64
    # identity comes from the table's own columns
    first = steps[steps["experiment"] == "20260218-150304-codellama-34b-tp2-general"].iloc[0]
    assert (first["model"], first["workload"], first["tp"]) == ("codellama-34b", "general", 2)


def test_parquet_values_are_the_table_values(table, steps):
    """Each canonical column is its trace attribute, row for row (after sorting)."""
    source = table.sort_values(["experiment_id", "step.id"]).reset_index(drop=True)
    for column, attribute in traces.STEP_ATTRIBUTES.items():
        np.testing.assert_array_equal(steps[column].to_numpy(),
                                      source[attribute].to_numpy(dtype=steps[column].dtype),
                                      err_msg=column)


def test_csv_step_table_gives_the_same_rows(table, steps, tmp_path):
    path = tmp_path / "steps.csv"
    table.iloc[::-1].to_csv(path, index=False)  # unsorted on disk: the reader sorts
    from_csv = traces.read_steps(path)
    pdt.assert_frame_equal(from_csv, steps, check_exact=False, rtol=1e-15, atol=0)
    for column in traces.STEP_COLUMNS:
        if column not in traces.FLOAT_COLUMNS:
            assert from_csv[column].equals(steps[column]), column


# ---------------------------------------------------------------------------- OTLP traces.json

def test_traces_json_synthetic_spec_conformant(tmp_path):
    rows = blis_rows(SYNTHETIC, 40, seed=1)
    path = write_traces_json(rows, experiment_path(tmp_path, SYNTHETIC), steps_per_span=7)
    text = path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    # the fixture is what the spec describes, so the reader is tested against that
    step_lines = [line for line in lines if "scheduler_steps_" in json.dumps(line)]
    assert len(step_lines) >= 2  # spans spread over several lines
    spans = [span for line in step_lines for resource in line["resourceSpans"]
             for scope in resource["scopeSpans"] for span in scope["spans"]
             if span["name"].startswith("scheduler_steps_")]
    assert max(sum(e["name"] == "step.BATCH_SUMMARY" for e in s["events"]) for s in spans) > 1
    assert '"intValue":"' in text and re.search(r'"intValue":[^"]', text) is None
    assert '"doubleValue":0}' in text  # whole-valued ratio without a decimal point
    assert "step.REQUEST_SNAPSHOT" in text and "journey.QUEUED" in text and "vllm.api" in text
    assert text.count("step.BATCH_SUMMARY") == 40
    assert text.count('"batch.prefill_tokens"') < 40  # zero-valued attributes were left out
    got = traces.read_steps(path)
    assert len(got) == 40
    assert list(got.columns) == traces.STEP_COLUMNS
    assert set(got["experiment"]) == {SYNTHETIC}
    assert set(got["model"]) == {"llama-2-70b"} and set(got["workload"]) == {"general"}
    assert set(got["tp"]) == {4}
    expected = rows.sort_values("step.id").reset_index(drop=True)
    for column, attribute in traces.STEP_ATTRIBUTES.items():
        np.testing.assert_array_equal(got[column].to_numpy(),
                                      expected[attribute].to_numpy(dtype=got[column].dtype),
                                      err_msg=column)
    assert got["kv_usage_ratio"].dtype == np.float64 and got["kv_usage_ratio"].iloc[0] == 0.0


def test_zero_attributes_left_out_default_to_zero(tmp_path):
    """proto3 JSON may leave out a zero-valued attribute: pure decode steps have no
    batch.prefill_tokens, and must still be read, with 0."""
    rows = blis_rows(SYNTHETIC, 30, seed=2)
    path = write_traces_json(rows, experiment_path(tmp_path, SYNTHETIC), omit_zeros=True)
    decode_only = rows[rows["batch.prefill_tokens"] == 0]
    assert len(decode_only) > 5
    got = traces.read_steps(path)
    sel = got["step_id"].isin(decode_only["step.id"].astype(int))
    assert sel.sum() == len(decode_only)
    assert (got.loc[sel, "prefill_tokens"] == 0).all()
    assert (got.loc[sel, "num_prefill_reqs"] == 0).all()
    assert (got["num_preempted"] == 0).all()


def test_duplicated_span_export_is_deduplicated(tmp_path):
    rows = blis_rows(SYNTHETIC, 50, seed=3)
    once = write_traces_json(rows, experiment_path(tmp_path / "a", SYNTHETIC))
    twice = write_traces_json(rows, experiment_path(tmp_path / "b", SYNTHETIC),
                              duplicate_spans=True)
    assert twice.read_text().count("step.BATCH_SUMMARY") > 50  # the file really has duplicates
    pdt.assert_frame_equal(traces.read_steps(twice), traces.read_steps(once))
    assert len(traces.read_steps(twice)) == 50


def test_same_step_id_with_another_start_time_is_not_deduplicated(tmp_path):
    """Dedupe is on (experiment, step id, start time): a restarted engine reusing a step id is
    a different step, and two rows with one id are refused rather than silently merged."""
    rows = blis_rows(SYNTHETIC, 30, seed=4)
    restarted = rows.iloc[:1].copy()
    restarted["step.ts_start_ns"] += 10**12
    restarted["step.ts_end_ns"] += 10**12
    path = write_traces_json(pd.concat([rows, restarted]), experiment_path(tmp_path, SYNTHETIC))
    with raises_input_error(path, "step id appears twice"):
        traces.read_steps(path)


def test_real_rows_give_identical_rows_and_features_from_both_readers(table, facts, tmp_path):
    experiment = "20260217-203421-llama-2-70b-hf-tp4-codegen"
    part = table[table["experiment_id"] == experiment].sort_values("step.id").iloc[100:300]
    assert len(part) == 200
    assert (part["step.id"].diff() == 1).sum() >= 5  # some rows have period_us
    parquet = tmp_path / "part.parquet"
    part.to_parquet(parquet, index=False)
    path = write_traces_json(part, experiment_path(tmp_path, experiment), duplicate_spans=True)
    from_table = traces.read_steps(parquet)
    from_traces = traces.read_steps(path)
    pdt.assert_frame_equal(from_traces, from_table)
    f_table = features.build_features(from_table, facts, 16)
    f_traces = features.build_features(from_traces, facts, 16)
    pdt.assert_frame_equal(f_traces, f_table)
    assert f_table["period_us"].notna().sum() >= 5
    assert set(f_table["model"]) == {"llama-2-70b-hf"}


def test_read_all_rejects_an_experiment_in_two_inputs(tmp_path):
    rows = blis_rows(SYNTHETIC, 20, seed=5)
    a = tmp_path / "a.parquet"
    rows.to_parquet(a, index=False)
    b = write_traces_json(rows, experiment_path(tmp_path, SYNTHETIC))
    with raises_input_error(b, SYNTHETIC, "also in"):
        traces.read_all([a, b])
    other = blis_rows("20260101-000000-codellama-34b-tp2-general", 20, seed=6)
    c = write_traces_json(other, experiment_path(tmp_path, other["experiment_id"].iloc[0]))
    both = traces.read_all([a, c])
    assert len(both) == 40 and both["experiment"].is_monotonic_increasing


# --------------------------------------------------------------------------------- bad inputs

@pytest.fixture()
def small_table() -> pd.DataFrame:
    return blis_rows(SYNTHETIC, 20, seed=7)


def test_missing_column(small_table, tmp_path):
    path = tmp_path / "steps.parquet"
    small_table.drop(columns=["batch.decode_tokens"]).to_parquet(path, index=False)
    with raises_input_error(path, "missing column", "batch.decode_tokens"):
        traces.read_steps(path)


def test_nan_duration(small_table, tmp_path):
    small_table.loc[5, "step.duration_us"] = pd.NA
    path = tmp_path / "steps.parquet"
    small_table.to_parquet(path, index=False)
    with raises_input_error(path, "NaN", "step.duration_us"):
        traces.read_steps(path)


def test_nan_duration_in_csv(small_table, tmp_path):
    small_table.loc[3, "step.duration_us"] = pd.NA
    path = tmp_path / "steps.csv"
    small_table.to_csv(path, index=False)
    with raises_input_error(path, "NaN", "step.duration_us"):
        traces.read_steps(path)


def test_negative_duration(small_table, tmp_path):
    small_table.loc[7, "step.duration_us"] = -5
    path = tmp_path / "steps.parquet"
    small_table.to_parquet(path, index=False)
    step = int(small_table.loc[7, "step.id"])
    with raises_input_error(path, "negative", "step.duration_us", f"step {step}"):
        traces.read_steps(path)


def test_experiment_with_fewer_than_10_steps(tmp_path):
    short = "20260101-000000-codellama-34b-tp2-general"
    table = pd.concat([blis_rows(SYNTHETIC, 20, seed=8), blis_rows(short, 9, seed=9)])
    path = tmp_path / "steps.parquet"
    table.to_parquet(path, index=False)
    with raises_input_error(path, "fewer than 10", f"{short} (9)"):
        traces.read_steps(path)
    assert len(traces.read_steps(path, min_steps_per_experiment=9)) == 29


def test_truncated_traces_line(tmp_path):
    rows = blis_rows(SYNTHETIC, 30, seed=10)
    path = write_traces_json(rows, experiment_path(tmp_path, SYNTHETIC), mix_other_scopes=False)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    lines[-1] = lines[-1][: len(lines[-1]) // 2]  # the writer died mid-line
    path.write_text("\n".join(lines) + "\n")
    with raises_input_error(path, f"line {len(lines)}", "truncated"):
        traces.read_steps(path)


@pytest.mark.parametrize("bad", ["12.5", "twelve", ""])
def test_non_integer_int_value(tmp_path, bad):
    rows = blis_rows(SYNTHETIC, 12, seed=11)
    path = write_traces_json(rows, experiment_path(tmp_path, SYNTHETIC), omit_zeros=False)
    text = path.read_text()
    target = '{"key":"queue.running_depth","value":{"intValue":"'
    at = text.index(target) + len(target)
    end = text.index('"', at)
    path.write_text(text[:at] + bad + text[end:])
    with raises_input_error(path, "intValue", repr(bad), "not an integer"):
        traces.read_steps(path)


@pytest.mark.parametrize("folder", ["traces", "llama-2-70b-tp4-general",
                                    "20260101-000000-llama-2-70b-general"])
def test_folder_name_not_an_experiment_id(tmp_path, folder):
    rows = blis_rows(SYNTHETIC, 12, seed=12)
    path = write_traces_json(rows, tmp_path / folder / "traces.json")
    with raises_input_error(path, repr(folder), "tp<N>"):
        traces.read_steps(path)


def test_no_batch_summary_events(tmp_path):
    rows = blis_rows(SYNTHETIC, 12, seed=13)
    path = write_traces_json(rows, experiment_path(tmp_path, SYNTHETIC))
    # keep only the lines without step spans: journeys and API spans, no step events
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and "step.BATCH_SUMMARY" not in line]
    assert kept
    path.write_text("\n".join(kept) + "\n")
    with raises_input_error(path, "no step.BATCH_SUMMARY events"):
        traces.read_steps(path)
    path.write_text("")
    with raises_input_error(path, "no step.BATCH_SUMMARY events"):
        traces.read_steps(path)


def test_summary_without_step_id(tmp_path):
    rows = blis_rows(SYNTHETIC, 12, seed=14)
    path = write_traces_json(rows, experiment_path(tmp_path, SYNTHETIC))
    text = path.read_text()
    first = '{"key":"step.id","value":{"intValue":"%d"}},' % int(rows["step.id"].iloc[3])
    assert text.count(first) >= 1
    path.write_text(text.replace(first, "", 1))
    with raises_input_error(path, "lacks", "step.id"):
        traces.read_steps(path)


@pytest.mark.parametrize("name", ["steps.txt", "steps.xlsx", "traces.json.gz"])
def test_unknown_file_format(tmp_path, name):
    path = tmp_path / name
    path.write_text("step.id,step.duration_us\n1,2\n")
    with raises_input_error(path, "unknown step data format"):
        traces.read_steps(path)


def test_missing_file_and_unreadable_table(tmp_path):
    missing = tmp_path / "nope.parquet"
    with raises_input_error(missing, "does not exist"):
        traces.read_steps(missing)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not a parquet file")
    with raises_input_error(broken, "cannot be read"):
        traces.read_steps(broken)
    with pytest.raises(InputError, match="no step data inputs"):
        traces.read_all([])


def test_token_sum_mismatch(small_table, tmp_path):
    small_table.loc[4, "batch.scheduled_tokens"] += 1
    path = tmp_path / "steps.csv"
    small_table.to_csv(path, index=False)
    with raises_input_error(path, "prefill_tokens + decode_tokens != scheduled_tokens"):
        traces.read_steps(path)


def test_non_numeric_column(small_table, tmp_path):
    small_table["batch.decode_tokens"] = small_table["batch.decode_tokens"].astype(str)
    small_table.loc[2, "batch.decode_tokens"] = "lots"
    path = tmp_path / "steps.csv"
    small_table.to_csv(path, index=False)
    with raises_input_error(path, "decode_tokens", "non-numeric"):
        traces.read_steps(path)
