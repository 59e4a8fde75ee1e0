"""The committed Go package: go vet and go test (which checks the generated formulas against the
committed Python vectors to 1e-12) must pass. Skipped only where the `go` toolchain is missing;
.ci/run installs it, so CI always runs this."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

GO_DIR = Path(__file__).resolve().parents[1] / "go"
GO = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK)
                            else None)
needs_go = pytest.mark.skipif(GO is None, reason="the `go` toolchain is not installed")


def run_go(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([GO, *args], cwd=GO_DIR, capture_output=True, text=True,
                          env={**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"})


@needs_go
def test_go_vet():
    result = run_go("vet", "./...")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_go
def test_go_test_checks_generated_formulas_against_python_vectors():
    result = run_go("test", "-count=1", "./...")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_go
def test_generated_files_are_gofmt_clean():
    result = subprocess.run([str(Path(GO).with_name("gofmt")), "-l", "."], cwd=GO_DIR,
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr
