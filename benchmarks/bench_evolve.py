"""Benchmark of one evolution run with the offline engine: rate, where the time goes, projection.

    python benchmarks/bench_evolve.py [--iterations 500] [--targets period_us duration_us]

For each target it runs the evolve stage (stages/evolve.py main(), params.yaml's settings with
the budget replaced by --iterations) in a throwaway project copy, as tests/test_evolution.py
does, never in the repository. The run happens in a child process (this file with --child) that
first wraps three functions with timers; nothing in the package changes, so normal runs pay
nothing:

  evaluation   stepformula.evaluator.evaluate_prepared (check, refit, score) in the worker
  mutator      OfflineMutator.mutate (the offline engine's answer) in the worker
  worker task  openevolve.process_parallel._run_iteration_worker (one whole iteration in the worker)

Each process appends its timings to its own file; the worker is forked after the wrapping, so
it inherits them. Reported per target, as shares of the evolution wall time (OpenEvolve's run,
from timing.json's evolution_seconds):

  evaluation, mutator;
  OpenEvolve in the worker: the rest of a worker task (prompt building, rebuilding programs
    from the database snapshot, parsing the answer, writing the program file, the evaluator's
    thread and timeout machinery);
  OpenEvolve outside the worker: the evolution wall time the worker was not busy with a task
    (database, snapshot pickling, IPC, checkpoints, the seeds' evaluation, start-up of the pool):
    the main process's work that the one worker's queue of in-flight tasks does not hide.

Rates: the mean over the run, and the steady rate of the second half from the journal's time
stamps (the database is full by then: population_size programs are pickled per task). The
projection for the full budget (evolve.generations x evolve.population iterations x evolve.seeds
runs x targets, one run after another as `dvc repro` runs them) uses the steady rate plus the
measured per-run overhead (start-up and writing the outputs), against the 30-minute goal.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 30 * 60
TIMED = ("evaluation", "mutator", "worker_task")


# ---- the child: a timed stage run ----------------------------------------------------------------

class _Recorder:
    """Appends `kind<TAB>seconds` lines to <folder>/<pid>.tsv (one file per process, opened on
    first use, so a forked worker opens its own)."""

    def __init__(self, folder: Path):
        self.folder, self.pid, self.out = folder, None, None

    def __call__(self, kind: str, seconds: float) -> None:
        if self.pid != os.getpid():
            self.pid = os.getpid()
            self.out = open(self.folder / f"{self.pid}.tsv", "a", encoding="utf-8")
        self.out.write(f"{kind}\t{seconds:.9f}\n")
        self.out.flush()


def _timed(function, kind: str, record: _Recorder):
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            record(kind, time.perf_counter() - started)
    return wrapper


def child(target: str, seed: int, profile_dir: Path) -> None:
    """Run the stage's main() with the timers in place (cwd is the project copy)."""
    import openevolve.process_parallel as process_parallel

    import stages.evolve as stage
    import stepformula.evaluator as evaluator
    from stepformula.engines.offline import OfflineMutator

    record = _Recorder(profile_dir)
    # evaluate_program_path (the worker's path) looks evaluate_prepared up in its module.
    evaluator.evaluate_prepared = _timed(evaluator.evaluate_prepared, "evaluation", record)
    OfflineMutator.mutate = _timed(OfflineMutator.mutate, "mutator", record)
    # Submitted by name (pickled as a reference): the wrapper keeps the name, so the forked
    # worker resolves it to the wrapper as well.
    process_parallel._run_iteration_worker = _timed(process_parallel._run_iteration_worker,
                                                    "worker_task", record)
    original_finish = stage.finish

    def keep_journal(checkpoint_root):
        journal = Path(checkpoint_root) / "journal.jsonl"
        if journal.exists():
            shutil.copy(journal, profile_dir / "journal.jsonl")
        original_finish(checkpoint_root)

    stage.finish = keep_journal
    usage = {"main_pid": os.getpid(), "load_before": os.getloadavg()[0]}
    original_run = stage.run_evolution

    def measured_run(**kwargs):
        # CPU of the main process and of the (by then joined) worker during the evolution only
        main_cpu, worker_cpu = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
        result = original_run(**kwargs)
        usage["main_cpu_seconds"] = _cpu(resource.RUSAGE_SELF) - main_cpu
        usage["worker_cpu_seconds"] = _cpu(resource.RUSAGE_CHILDREN) - worker_cpu
        return result

    stage.run_evolution = measured_run
    stage.main(target, seed)
    usage["load_after"] = os.getloadavg()[0]
    (profile_dir / "usage.json").write_text(json.dumps(usage))


def _cpu(who) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


# ---- the parent: copies, runs, figures -----------------------------------------------------------

def make_copy(root: Path, iterations: int) -> dict:
    (root / "data" / "split" / "train").mkdir(parents=True)
    shutil.copy(REPO / "data" / "feature_manifest.json", root / "data" / "feature_manifest.json")
    for split in (REPO / "data" / "split" / "train").glob("*.parquet"):
        shutil.copy(split, root / "data" / "split" / "train" / split.name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    full = dict(params["evolve"])
    population = int(full["population"])
    generations, population = ((iterations // population, population)
                               if iterations % population == 0 else (iterations, 1))
    params["evolve"].update({"generations": generations, "population": population,
                             "progress_every": max(1, iterations // 5)})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return {"full": full, "targets": list(params["targets"])}


def run_target(target: str, seed: int, iterations: int, keep: bool) -> dict:
    from stepformula.evolution import DETERMINISTIC_ENV

    root = Path(tempfile.mkdtemp(prefix=f"bench_evolve_{target}_"))
    try:
        make_copy(root, iterations)
        profile = root / "profile"
        profile.mkdir()
        env = {**os.environ, **DETERMINISTIC_ENV, "DVC_NO_ANALYTICS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                           os.environ.get("PYTHONPATH")]))}
        started = time.time()
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", target,
                        str(seed), str(profile)], cwd=root, env=env, check=True)
        process_wall = time.time() - started
        out = root / "evolve" / target / f"run{seed}"
        timing = json.loads((out / "timing.json").read_text())
        run = json.loads((out / "run.json").read_text())
        usage = json.loads((profile / "usage.json").read_text())
        return summarise(target, iterations, timing, run, usage, profile, process_wall)
    finally:
        if keep:
            print(f"  (kept {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)


def summarise(target, iterations, timing, run, usage, profile: Path, process_wall: float) -> dict:
    sums = defaultdict(lambda: defaultdict(float))
    counts = defaultdict(lambda: defaultdict(int))
    for path in profile.glob("*.tsv"):
        pid = int(path.stem)
        for line in path.read_text().splitlines():
            kind, seconds = line.split("\t")
            sums[pid][kind] += float(seconds)
            counts[pid][kind] += 1
    workers = [pid for pid in sums if counts[pid]["worker_task"]]
    assert len(workers) == 1, f"expected one worker process, found {workers}"
    worker = workers[0]
    main = usage["main_pid"]
    evolution = timing["evolution_seconds"]
    task, evaluation, mutator = (sums[worker][k] for k in ("worker_task", "evaluation", "mutator"))

    times = []
    for line in (profile / "journal.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") != "seed":
            times.append((record["iteration"], record["time"]))
    times.sort()
    half = len(times) // 2
    steady = ((len(times) - 1 - half) / (times[-1][1] - times[half][1])
              if len(times) > 3 and times[-1][1] > times[half][1] else iterations / evolution)
    return {
        "target": target, "iterations": iterations, "recorded": run["iterations_recorded"],
        "evolution_seconds": evolution, "process_seconds": process_wall,
        "overhead_seconds": process_wall - evolution,
        "rate": iterations / evolution, "steady_rate": steady,
        "evaluation": evaluation, "mutator": mutator, "worker_other": task - evaluation - mutator,
        "outside_worker": evolution - task, "worker_task": task,
        "evaluations_in_worker": counts[worker]["evaluation"],
        "evaluation_ms": 1000 * evaluation / max(1, counts[worker]["evaluation"]),
        "mutator_ms": 1000 * mutator / max(1, counts[worker]["mutator"]),
        "main_evaluation": sums[main]["evaluation"], "main_evaluations": counts[main]["evaluation"],
        "main_cpu": usage["main_cpu_seconds"], "worker_cpu": usage["worker_cpu_seconds"],
        "load": max(usage["load_before"], usage["load_after"]),
        "best_mape": run["best"]["mape"], "best_ops": run["best"]["num_operations"],
    }


def report(results: list[dict], full: dict, n_targets: int) -> None:
    per_run = int(full["generations"]) * int(full["population"])
    runs = len(full["seeds"])
    print()
    projected = projected_free = 0.0
    for r in results:
        e = r["evolution_seconds"]
        print(f"{r['target']}: {r['iterations']} iterations ({r['recorded']} recorded) in "
              f"{e:.1f} s of evolution, {r['process_seconds']:.1f} s in all")
        print(f"  rate {r['rate']:.1f} it/s over the run, {r['steady_rate']:.1f} it/s in its "
              f"second half")
        print(f"  evaluation          {r['evaluation']:7.1f} s  {100 * r['evaluation'] / e:5.1f}%"
              f"   ({r['evaluations_in_worker']} in the worker, {r['evaluation_ms']:.1f} ms each)")
        print(f"  mutator             {r['mutator']:7.1f} s  {100 * r['mutator'] / e:5.1f}%"
              f"   ({r['mutator_ms']:.1f} ms a call)")
        print(f"  OpenEvolve, worker  {r['worker_other']:7.1f} s  "
              f"{100 * r['worker_other'] / e:5.1f}%   (prompt, snapshot, parsing, evaluator "
              "plumbing)")
        print(f"  OpenEvolve, outside {r['outside_worker']:7.1f} s  "
              f"{100 * r['outside_worker'] / e:5.1f}%   (database, snapshots, IPC, checkpoints "
              "not hidden behind the worker)")
        print(f"  per-run overhead outside the evolution {r['overhead_seconds']:.1f} s "
              f"(start-up, outputs); {r['main_evaluations']} evaluations in the main process "
              f"({r['main_evaluation']:.1f} s)")
        # One worker, the main process working alongside it: on two free cores the rate is
        # bounded by the busier of the two.
        bound = max(r["main_cpu"], r["worker_cpu"])
        print(f"  CPU during the evolution: main process {r['main_cpu']:.1f} s, worker "
              f"{r['worker_cpu']:.1f} s ({1000 * r['worker_cpu'] / r['iterations']:.1f} ms an "
              f"iteration); on two free cores ~{r['iterations'] / bound:.1f} it/s "
              f"(load average {r['load']:.1f} while measured)")
        print(f"  best train MAPE {100 * r['best_mape']:.2f}% with {r['best_ops']} ops")
        seconds = runs * (per_run / r["steady_rate"] + r["overhead_seconds"])
        free = runs * (per_run * bound / r["iterations"] + r["overhead_seconds"])
        projected += seconds
        projected_free += free
        print(f"  full budget: {runs} runs x {per_run} iterations = {seconds / 60:.1f} min at the "
              f"measured rate, ~{free / 60:.1f} min on two free cores")
    measured = {r["target"] for r in results}
    if len(measured) < n_targets:
        print(f"(projection covers the measured targets only: {', '.join(sorted(measured))})")
    verdict = "within" if projected <= GOAL_SECONDS else "over"
    print(f"\nprojected full budget ({full['generations']} generations x {full['population']} x "
          f"{runs} runs x {len(measured)} targets, one run after another): "
          f"{projected / 60:.1f} min, {verdict} the {GOAL_SECONDS // 60}-minute goal "
          f"({100 * projected / GOAL_SECONDS:.0f}% of it); ~{projected_free / 60:.1f} min on two "
          "free cores (from the CPU times)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=500, help="iterations per target")
    parser.add_argument("--targets", nargs="*", default=None, help="default: params' targets")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the project copies")
    args = parser.parse_args()
    if args.iterations < 10:
        parser.error("--iterations must be >= 10")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    targets = args.targets or list(params["targets"])
    results = []
    for target in targets:
        print(f"== {target}: {args.iterations} iterations, offline engine, seed {args.seed}",
              flush=True)
        results.append(run_target(target, args.seed, args.iterations, args.keep))
    report(results, params["evolve"], len(params["targets"]))


if __name__ == "__main__":
    main()
