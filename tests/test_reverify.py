"""Re-verification of the committed results: what main holds must be what the code computes.

From a copy of the tracked files, the select, test and translate stages are run again on the
committed archives and splits; every metric, verdict, selected program, report, plot table and
generated Go file must come out byte for byte as committed. So a hand-edited metric or Go file,
or a code change without `dvc repro`, fails here (and in CI). PNGs are not compared: their bytes
depend on the installed matplotlib and FreeType, not on the results (their CSVs are compared).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stepformula.io import read_json
from stepformula.report import README_END, README_START, readme_table

ROOT = Path(__file__).resolve().parents[1]
RECOMPUTED = ["metrics/test.json", "metrics/verdict.json", "reports/results.md",
              "select/duration_us/selection.json", "select/duration_us/selected_program.py",
              "select/period_us/selection.json", "select/period_us/selected_program.py",
              "plots/test_mape_by_experiment.csv", "plots/pareto_duration_us.csv",
              "plots/pareto_period_us.csv", "plots/evolution_duration_us.csv",
              "plots/evolution_period_us.csv", "plots/test_predictions_duration_us.csv",
              "plots/test_predictions_period_us.csv", "go/duration_us_formula.go",
              "go/period_us_formula.go", "go/testdata/duration_us_vectors.json",
              "go/testdata/period_us_vectors.json"]


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    return [line for line in out.stdout.splitlines() if line]


@pytest.fixture(scope="module")
def recomputed(tmp_path_factory):
    copy = tmp_path_factory.mktemp("reverify")
    for name in tracked_files():
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    for name in RECOMPUTED:
        (copy / name).unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(copy), "DVC_NO_ANALYTICS": "1"}
    targets = read_json(ROOT / "metrics/verdict.json").keys()
    commands = [[sys.executable, "-m", "stages.select", t] for t in targets]
    commands += [[sys.executable, "-m", "stages.test"]]
    commands += [[sys.executable, "-m", "stages.translate", t] for t in targets]
    for command in commands:
        subprocess.run(command, cwd=copy, env=env, check=True, capture_output=True)
    return copy


@pytest.mark.parametrize("name", RECOMPUTED)
def test_committed_result_is_what_the_code_computes(recomputed, name):
    committed = (ROOT / name).read_bytes()
    again = (recomputed / name).read_bytes()
    assert again == committed, f"{name} differs from a re-run of its stage: run `dvc repro`"


def test_readme_results_table_is_generated_from_metrics():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text[text.index(README_START) + len(README_START):text.index(README_END)].strip()
    expected = readme_table(read_json(ROOT / "metrics/test.json"),
                            read_json(ROOT / "metrics/verdict.json"))
    assert block == expected, "README results table is stale: python -m stepformula.report --readme"


def test_dvc_status_is_clean():
    """dvc.lock, params.yaml and every committed output agree (no stage is stale)."""
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
    result = subprocess.run([dvc, "status", "-q"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if result.returncode != 0:
        detail = subprocess.run([dvc, "status"], cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, "DVC_NO_ANALYTICS": "1"}).stdout
        pytest.fail(f"dvc status is not clean:\n{detail}")
