"""Stage evolve (one target, one run): OpenEvolve from the three seeds on the train split.

    python -m stages.evolve <target> <run_seed>

Writes evolve/<target>/run<seed>/{best_program.py, archive.json, history.csv, run.json,
timing.json}; checkpoints go to checkpoints/<target>/run<seed>/ (not in git), from which a
killed run resumes.
"""

import os
import sys
import time
from pathlib import Path

import pandas as pd

from stepformula.config import load_params, section
from stepformula.errors import InputError
from stepformula.evaluator import EvaluatorSettings, load_training_data
from stepformula.evolution import DETERMINISTIC_ENV, EvolveSettings, finish, run_evolution
from stepformula.features import available_features
from stepformula.io import read_json, write_json
from stepformula.engines.mix import model_configs
from stepformula.prompts import system_message, typical_scales
from stepformula.run_outputs import write_run_outputs
from stepformula.seeds import seed_programs


def main(target: str, run_seed: int) -> None:
    params = load_params()
    if target not in params["targets"]:
        raise InputError("stages/evolve.py", f"unknown target {target!r}")
    settings = EvolveSettings.from_params(section(params, "evolve"))
    if run_seed not in settings.seeds:
        raise InputError("stages/evolve.py", f"run seed {run_seed} is not in evolve.seeds")
    evaluator_settings = EvaluatorSettings.from_params(params, target)
    manifest = read_json("data/feature_manifest.json")
    names = available_features(manifest)
    train_path = Path(f"data/split/train/{target}.parquet")
    train = load_training_data(train_path, target, names,
                               decode_below=evaluator_settings.decode_below,
                               prefill_at_least=evaluator_settings.prefill_at_least)
    seeds = seed_programs(train.features, train.target, names, run_seed)
    description = next(t["derivation"] for t in manifest["targets"] if t["name"] == target)
    prompt = system_message(target, description, manifest,
                            int(section(params, "select")["max_operations"]),
                            evaluator_settings.lam, *typical_scales(train.features, train.target))
    label = f"{target} run {run_seed}"
    checkpoint_root = Path("checkpoints") / target / f"run{run_seed}"
    out_dir = Path("evolve") / target / f"run{run_seed}"

    server = None
    if settings.engines.get("local", 0) > 0:
        from stepformula.engines.local import LocalServer
        server = LocalServer(**settings.local.get("server", {}))
        server.start()
    try:
        models, model_names = model_configs(
            settings.engines, settings.openai, settings.local,
            local_base_url=server.base_url if server else None,
            local_model=server.model_name if server else None)
        started = time.time()
        result = run_evolution(
            target=target, run_seed=run_seed, settings=settings,
            evaluator_settings=evaluator_settings, train_path=train_path, feature_names=names,
            system_message=prompt, seeds=seeds, checkpoint_root=checkpoint_root, models=models,
            model_names=model_names, label=label)
    finally:
        if server is not None:
            server.stop()
    run = write_run_outputs(out_dir, result=result, target=target, run_seed=run_seed,
                            settings=settings, evaluator_settings=evaluator_settings, train=train,
                            engines=settings.engines)
    history = pd.read_csv(out_dir / "history.csv")
    write_json(out_dir / "timing.json", {
        "wall_seconds": round(time.time() - started, 3),
        "evolution_seconds": round(result.wall_seconds, 3),
        "resumed_from_iteration": result.resumed_from,
        "iterations_per_second": round(len(history) / max(result.wall_seconds, 1e-9), 3)})
    finish(checkpoint_root)
    best = run["best"]
    print(f"evolve {label}: best train MAPE {100 * best['mape']:.2f}% with "
          f"{best['num_operations']} ops after {run['iterations_recorded']} iterations")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m stages.evolve <target> <run_seed>")
    if any(os.environ.get(k) != v for k, v in DETERMINISTIC_ENV.items()):
        # Before start-up: set order (OpenEvolve's islands and archive are sets) needs a fixed
        # hash seed, and bit-identical constant fits need single-threaded BLAS (a threaded
        # reduction changes the last bits, and a flat MAPE landscape amplifies them).
        os.execve(sys.executable, [sys.executable, "-m", "stages.evolve"] + sys.argv[1:],
                  {**os.environ, **DETERMINISTIC_ENV})
    main(sys.argv[1], int(sys.argv[2]))
