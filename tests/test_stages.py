"""Stages write all or nothing: on bad input the extract stage raises InputError and writes
neither output (an older output stays as it was); on good input it writes both.

Each test runs a stage's main() in a temporary folder laid out like the repository: the real
params.yaml and data/models.yaml, and a small step table where params.yaml expects the raw data.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from otlp import blis_rows  # noqa: E402

from stepformula.errors import InputError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = ("data/features.parquet", "data/feature_manifest.json")
GOOD = ["20260101-000000-llama-2-70b-tp4-general", "20260102-000000-codellama-34b-tp2-codegen"]


def load_stage(name: str):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


extract = load_stage("extract")
split = load_stage("split")


@pytest.fixture()
def repo(tmp_path, monkeypatch) -> Path:
    """A folder laid out like the repository, as the working directory."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "data" / "raw").mkdir(parents=True)
    shutil.copy(REPO / "data" / "models.yaml", tmp_path / "data" / "models.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def raw_input(repo: Path) -> Path:
    """Where params.yaml's extract.inputs expects the step data."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (path,) = params["extract"]["inputs"]
    return repo / path


def write_table(repo: Path, table: pd.DataFrame) -> Path:
    path = raw_input(repo)
    table.to_parquet(path, index=False)
    return path


def good_table() -> pd.DataFrame:
    return pd.concat([blis_rows(e, 40, seed=i) for i, e in enumerate(GOOD)], ignore_index=True)


def assert_no_output(repo: Path) -> None:
    for output in OUTPUTS:
        assert not (repo / output).exists(), output
    leftovers = [p.name for p in (repo / "data").iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def test_missing_column_writes_nothing(repo):
    path = write_table(repo, good_table().drop(columns=["batch.prefill_tokens"]))
    with pytest.raises(InputError) as info:
        extract.main()
    assert info.value.source == str(path.relative_to(repo))  # the input, as params names it
    assert "batch.prefill_tokens" in info.value.problem
    assert_no_output(repo)


def test_unknown_model_writes_nothing(repo):
    table = pd.concat([good_table(), blis_rows("20260103-000000-gpt-9-tp8-general", 20)],
                      ignore_index=True)
    write_table(repo, table)
    with pytest.raises(InputError) as info:
        extract.main()
    assert "models.yaml" in info.value.source and "'gpt-9'" in info.value.problem
    assert_no_output(repo)


@pytest.mark.parametrize("spoil", ["negative_duration", "unknown_model", "too_few_steps"])
def test_bad_input_leaves_older_outputs_untouched(repo, spoil):
    table = good_table()
    if spoil == "negative_duration":
        table.loc[10, "step.duration_us"] = -1
    elif spoil == "unknown_model":
        table["model"] = table["model"].replace("codellama-34b", "codellama-35b")
    else:
        table = table.iloc[:45]  # the second experiment keeps 5 steps
    write_table(repo, table)
    old = {output: f"older {output}\n".encode() for output in OUTPUTS}
    for output, content in old.items():
        (repo / output).write_bytes(content)
    stamps = {output: (repo / output).stat().st_mtime_ns for output in OUTPUTS}
    with pytest.raises(InputError):
        extract.main()
    for output, content in old.items():
        assert (repo / output).read_bytes() == content, output
        assert (repo / output).stat().st_mtime_ns == stamps[output], output
    assert sorted(p.name for p in (repo / "data").iterdir()) == sorted(
        ["raw", "models.yaml", "features.parquet", "feature_manifest.json"])


def test_good_input_writes_both(repo):
    for output in OUTPUTS:
        (repo / output).write_text("older\n")
    write_table(repo, good_table())
    extract.main()
    rows = pd.read_parquet(repo / OUTPUTS[0])
    manifest = json.loads((repo / OUTPUTS[1]).read_text(encoding="utf-8"))
    assert len(rows) == 80
    assert sorted(rows["experiment"].unique()) == GOOD
    assert {"duration_us", "period_us", "kv_sum", "peak_flops_bf16"} <= set(rows.columns)
    assert set(manifest["experiments"]) == set(GOOD)
    assert manifest["inputs"] == ["data/raw/enriched_steps_3exp.parquet"]
    assert len(manifest["features"]) == 18
    periods = {t["name"]: t["rows"] for t in manifest["targets"]}
    assert periods["duration_us"] == 80
    assert periods["period_us"] == int(rows["period_us"].notna().sum()) > 0
    # a rerun on the same input gives the same bytes
    before = [(repo / o).read_bytes() for o in OUTPUTS]
    extract.main()
    assert [(repo / o).read_bytes() for o in OUTPUTS] == before


def test_split_stage_all_or_nothing(repo):
    write_table(repo, good_table())
    extract.main()
    split.main()
    for part in ("train", "valid", "test"):
        for target in ("duration_us", "period_us"):
            frame = pd.read_parquet(repo / "data" / "split" / part / f"{target}.parquet")
            assert len(frame) > 0 and frame[target].notna().all()
    shutil.rmtree(repo / "data" / "split")
    # an experiment with too few period_us rows for 60/20/20: nothing is written
    rows = pd.read_parquet(repo / OUTPUTS[0])
    keep = rows["period_us"].notna() & (rows["experiment"] == GOOD[1])
    first = rows.index[keep][0]
    rows.loc[keep & (rows.index != first), "period_us"] = float("nan")
    rows.to_parquet(repo / OUTPUTS[0], index=False)
    with pytest.raises(InputError, match="too few"):
        split.main()
    assert not (repo / "data" / "split").exists()
