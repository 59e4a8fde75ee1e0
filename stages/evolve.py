"""Stage evolve (one target, one run): OpenEvolve from the three seeds on the train split.

    python -m stages.evolve <target> <run_seed>
    python -m stages.evolve <target> <run_seed> --engine local --iterations 50 --out arms/<target>/local

The first form is the evolve stage: params' engine mix and budget (generations x population),
outputs in evolve/<target>/run<seed>/, checkpoints in checkpoints/<target>/run<seed>/ (not in
git), from which a killed run resumes. The options are for the arms comparison (the `arms`
stage): one engine alone, a budget in iterations, outputs in --out and checkpoints in
checkpoints/<--out>/. Both write {best_program.py, archive.json, history.csv, run.json,
timing.json} through the same code path.

The `local` engine: the stage assembles the model (cached outside the repo), serves it on
127.0.0.1 with `evolve.local.threads` / `n_ctx`, checks it answers before the run, and keeps a
watchdog thread on it during the run (OpenEvolve calls the model from a worker process): a
server that dies is restarted on the same port, and one that cannot be restarted stops the run
and fails the stage with the server's error.
"""

import argparse
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

from stepformula.config import load_params, section
from stepformula.errors import InputError
from stepformula.determinism import reexec_if_needed
from stepformula.evolution import EvolveSettings, finish, run_evolution
from stepformula.io import write_json
from stepformula.engines.mix import model_configs
from stepformula.run_inputs import run_inputs
from stepformula.run_outputs import write_run_outputs

ENGINES = ("offline", "openai", "local")
WATCHDOG_SECONDS = 5.0


def start_local_server(options: dict):
    """The embedded model's server, started and answering; options from params evolve.local."""
    from stepformula.engines.local import LocalServer, assemble_model, default_cache_dir

    model_path = assemble_model(default_cache_dir())
    try:
        threads, n_ctx = int(options.get("threads", 1)), int(options.get("n_ctx", 4096))
        start_timeout = float(options.get("start_timeout", 300))
    except (TypeError, ValueError) as exc:
        raise InputError("params.yaml evolve.local", f"bad server option: {exc}") from None
    if threads < 1 or n_ctx < 512:
        raise InputError("params.yaml evolve.local", "threads must be >= 1 and n_ctx >= 512")
    server = LocalServer(model_path, threads=threads, n_ctx=n_ctx, start_timeout=start_timeout)
    server.start()
    return server


def _server_problem(server, watchdog) -> str | None:
    """Why the local server failed the run (stops the watchdog), or None if it did not."""
    if server is None:
        return None
    watchdog.stop()
    if watchdog.error is not None:
        return ("the local LLM server failed during the run and could not be restarted: "
                f"{watchdog.error}")
    if not server.is_alive():
        return (f"the local LLM server on {server.base_url} stopped answering during the run "
                f"(restarts so far: {server.restarts}); log tail:\n{server.log_tail()}")
    return None


def main(target: str, run_seed: int, *, engine: str | None = None, iterations: int | None = None,
         out_dir: str | Path | None = None) -> None:
    params = load_params()
    if target not in params["targets"]:
        raise InputError("stages/evolve.py", f"unknown target {target!r}")
    settings = EvolveSettings.from_params(section(params, "evolve"))
    if out_dir is None and run_seed not in settings.seeds:
        raise InputError("stages/evolve.py", f"run seed {run_seed} is not in evolve.seeds")
    if engine is not None:
        if engine not in ENGINES:
            raise InputError("--engine", f"{engine!r} is not one of {', '.join(ENGINES)}")
        settings = dataclasses.replace(settings, engines={engine: 1.0})
    if iterations is not None:
        if iterations < 1:
            raise InputError("--iterations", f"must be >= 1, got {iterations}")
        settings = dataclasses.replace(settings, iterations_override=int(iterations))
    # Every model config is built (and an openai key checked) before anything loads or runs.
    uses_local = settings.engines.get("local", 0) > 0
    model_configs(settings.engines, settings.openai, settings.local,
                  local_base_url="http://127.0.0.1:1/v1" if uses_local else None,
                  local_model="local" if uses_local else None)
    inputs = run_inputs(params, target, run_seed)
    if out_dir is None:
        label = f"{target} run {run_seed}"
        checkpoint_root = Path("checkpoints") / target / f"run{run_seed}"
        out_dir = Path("evolve") / target / f"run{run_seed}"
    else:
        out_dir = Path(out_dir)
        if out_dir.is_absolute() or ".." in out_dir.parts:
            raise InputError("--out", f"{out_dir} must be a folder inside the repository")
        label = f"{target} {'+'.join(settings.engines)} seed {run_seed}"
        checkpoint_root = Path("checkpoints") / out_dir

    server = watchdog = None
    if uses_local:
        from stepformula.engines.local import ServerWatchdog

        server = start_local_server(settings.local)
    started = time.time()
    try:
        models, model_names = model_configs(
            settings.engines, settings.openai, settings.local,
            local_base_url=server.base_url if server else None,
            local_model=server.model_name if server else None)
        if server is not None:
            server.ensure_alive()
            # A failed restart interrupts the run: OpenEvolve's SIGINT handler stops it after the
            # iteration in flight (before its handler is installed, KeyboardInterrupt does).
            watchdog = ServerWatchdog(server, WATCHDOG_SECONDS,
                                      on_failure=lambda err: os.kill(os.getpid(), signal.SIGINT))
            watchdog.start()
        try:
            result = run_evolution(
                target=target, run_seed=run_seed, settings=settings,
                evaluator_settings=inputs.evaluator_settings, train_path=inputs.train_path,
                feature_names=inputs.feature_names, system_message=inputs.system_message,
                seeds=inputs.seeds,
                checkpoint_root=checkpoint_root, models=models, model_names=model_names,
                label=label)
        except BaseException as exc:
            # Iterations fail fast once the server is gone, so OpenEvolve may end the run (or the
            # watchdog's SIGINT may) before the server is named: say what really went wrong.
            problem = _server_problem(server, watchdog)
            if problem is None:
                raise
            raise RuntimeError(f"evolve {label}: {problem}; no outputs written (checkpoints kept "
                               f"in {checkpoint_root})") from exc
        problem = _server_problem(server, watchdog)
        if problem is not None:
            raise RuntimeError(f"evolve {label}: {problem}; no outputs written (checkpoints kept "
                               f"in {checkpoint_root})")
    finally:
        if watchdog is not None:
            watchdog.stop()
        if server is not None:
            server.stop()
    # OpenEvolve ends a run early and normally on SIGINT/SIGTERM (graceful shutdown): such a run
    # must neither pass for a finished one nor lose the checkpoints it would resume from.
    reached = max((r["iteration"] for r in result.records if r.get("kind") != "seed"), default=0)
    if reached < settings.iterations:
        raise RuntimeError(f"evolve {label}: the run stopped at iteration {reached} of "
                           f"{settings.iterations} (interrupted?); no outputs written; rerun to "
                           f"resume from the checkpoints in {checkpoint_root}")
    run = write_run_outputs(out_dir, result=result, target=target, run_seed=run_seed,
                            settings=settings, evaluator_settings=inputs.evaluator_settings,
                            train=inputs.train,
                            engines=settings.engines)
    timing = {"wall_seconds": round(time.time() - started, 3),
              "evolution_seconds": round(result.wall_seconds, 3),
              "resumed_from_iteration": result.resumed_from,
              # the iterations this invocation ran (not the seeds, nor those before a resume)
              "iterations_per_second": round((settings.iterations - (result.resumed_from or 0))
                                             / max(result.wall_seconds, 1e-9), 3)}
    if server is not None:
        timing["local_server_restarts"] = server.restarts
    write_json(out_dir / "timing.json", timing)
    finish(checkpoint_root)
    best = run["best"]
    print(f"evolve {label}: best train MAPE {100 * best['mape']:.2f}% with "
          f"{best['num_operations']} ops after {run['iterations_recorded']} iterations")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stages.evolve")
    parser.add_argument("target")
    parser.add_argument("run_seed", type=int)
    parser.add_argument("--engine", choices=ENGINES, default=None,
                        help="this engine alone instead of params' evolve.engine mix")
    parser.add_argument("--iterations", type=int, default=None,
                        help="budget in iterations instead of generations x population")
    parser.add_argument("--out", default=None,
                        help="output folder (default evolve/<target>/run<seed>); checkpoints "
                             "go to checkpoints/<out>")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    # Before start-up: see stepformula.determinism (hash seed, BLAS threads, malloc fill).
    reexec_if_needed("stages.evolve")
    main(args.target, args.run_seed, engine=args.engine, iterations=args.iterations,
         out_dir=args.out)
