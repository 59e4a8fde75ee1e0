"""Stage select (one target): every elite of every run scored on validation; the best program
under the op limit is the one the test stage will score.

    python -m stages.select <target>
"""

import dataclasses
import sys
from pathlib import Path

import pandas as pd

from stepformula.config import load_params, section
from stepformula.errors import InputError
from stepformula.evaluator import EvaluatorSettings, evaluate_prepared, load_training_data
from stepformula.features import available_features
from stepformula.io import read_json, write_json, write_text
from stepformula.plots import evolution_curves, pareto_plot, write_csv
from stepformula.selection import pareto_front, read_archives, score_candidates, select_best


def main(target: str) -> None:
    params = load_params()
    op_limit = int(section(params, "select")["max_operations"])
    settings = EvaluatorSettings.from_params(params, target)
    names = available_features(read_json("data/feature_manifest.json"))
    valid = load_training_data(f"data/split/valid/{target}.parquet", target, names,
                               decode_below=settings.decode_below,
                               prefill_at_least=settings.prefill_at_least)
    seeds = section(params, "evolve")["seeds"]
    paths = [Path("evolve") / target / f"run{seed}" / "archive.json" for seed in seeds]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise InputError(missing[0], "archive missing: run the evolve stage for every seed")
    candidates = score_candidates(read_archives(paths), valid, settings)
    best = select_best(candidates, op_limit)
    front = pareto_front(candidates)
    out = Path("select") / target
    document = {
        "target": target, "op_limit": op_limit, "lambda": settings.lam,
        "candidates": len(candidates),
        "eligible": sum(1 for c in candidates if c.valid_score is not None
                        and c.num_operations < op_limit),
        "selected": None if best is None else best.row(),
        "pareto_front": [c.row() for c in front],
    }
    points = pd.DataFrame([{"num_operations": c.num_operations, "valid_mape": c.valid_mape}
                           for c in candidates if c.valid_mape is not None])
    front_table = pd.DataFrame([{"num_operations": c.num_operations, "valid_mape": c.valid_mape,
                                 "selected": best is not None and c.code == best.code}
                                for c in front])
    write_json(out / "selection.json", document)
    write_text(out / "selected_program.py", best.code if best is not None else
               "# No program under the op limit was valid on validation.\n")
    write_csv(f"plots/pareto_{target}.csv", front_table)
    pareto_plot(points, front_table, None if best is None else best.num_operations, op_limit,
                f"plots/pareto_{target}.png", f"{target}: validation Pareto front")
    # Validation MAPE of the best-so-far program (by training fitness) at each improvement.
    no_refit = dataclasses.replace(settings, refit=False)
    curves = []
    for seed in seeds:
        run_dir = Path("evolve") / target / f"run{seed}"
        run = read_json(run_dir / "run.json")
        engine = "+".join(run["engine_weights"])
        for step in read_json(run_dir / "improvements.json"):
            evaluation = evaluate_prepared(step["code"], valid, no_refit)
            curves.append({"target": target, "run": seed, "engine": engine,
                           "iteration": step["iteration"], "train_mape": step["train_mape"],
                           "valid_mape": None if evaluation.failed else evaluation.metrics["mape"]})
        # The best holds to the end of the run: one closing point at the last iteration.
        curves.append({**curves[-1], "iteration": run["budget"]["iterations"]})
    curves = pd.DataFrame(curves)
    write_csv(f"plots/evolution_{target}.csv", curves)
    evolution_curves(curves, settings.lam, f"plots/evolution_{target}.png",
                     f"{target}: the best program so far (by training fitness), per run")
    if best is None:
        print(f"select {target}: no valid program under {op_limit} operations")
    else:
        print(f"select {target}: {best.num_operations} ops, validation MAPE "
              f"{100 * best.valid_mape:.2f}% (runs {list(best.runs)})")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m stages.select <target>")
    main(sys.argv[1])
