"""Stage arms_compare: the language-model arm against the symbolic control arm, on validation.

    python -m stages.arms_compare

Reads arms/<target>/<engine>/ (written by the `arms` stage: one run per target and engine, each
engine alone, the same iteration budget and run seed) and writes arms/comparison.json: per
(target, engine) the run's best program (by train fitness) and its archive scored on the
VALIDATION split (no refit; the test split is never read), how much the engine explored
(children scored, distinct programs and formula shapes), what it cost (engine calls, failures,
tokens, wall time), and per target how many archive programs and formula shapes the arms share.
"""

import dataclasses
import math
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from stepformula.config import load_params, section
from stepformula.errors import InputError
from stepformula.evaluator import EvaluatorSettings, evaluate_prepared, load_training_data
from stepformula.features import available_features
from stepformula.io import read_json, write_json
from stepformula.journal import program_digests
from stepformula.selection import read_archives, score_candidates, select_best

QUESTION = ("Does the language model find better or different formulas per evaluation than the "
            "symbolic control arm at the same budget? Each arm is one OpenEvolve run with one "
            "engine alone, the same iterations (one engine call + one evaluation each), the same "
            "seeds and run seed, on train; every number below that says 'valid' is measured on "
            "the validation split without refitting (the test split is not read).")

RUN_FILES = ("best_program.py", "archive.json", "history.csv", "run.json", "timing.json")


def _finite(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def arm_row(target: str, engine: str, arm_dir: Path, valid, settings: EvaluatorSettings,
            op_limit: int) -> tuple[dict, dict]:
    """(comparison row, what the overlap needs) for one arm."""
    missing = [name for name in RUN_FILES if not (arm_dir / name).exists()]
    if missing:
        raise InputError(arm_dir / missing[0], "missing: run the arms stage first")
    run = read_json(arm_dir / "run.json")
    timing = read_json(arm_dir / "timing.json")
    history = pd.read_csv(arm_dir / "history.csv", keep_default_na=False)
    if "code_sha" not in history.columns:
        raise InputError(arm_dir / "history.csv", "has no code_sha column: rerun the arms stage")
    children = history[history["kind"] == "child"]
    seed_rows = history[history["kind"] == "seed"]
    seed_best = pd.to_numeric(seed_rows["combined_score"], errors="coerce").max()
    child_scores = pd.to_numeric(children["combined_score"], errors="coerce")

    no_refit = dataclasses.replace(settings, refit=False)
    best = evaluate_prepared((arm_dir / "best_program.py").read_text(encoding="utf-8"), valid,
                             no_refit)
    candidates = score_candidates(read_archives([arm_dir / "archive.json"]), valid, settings)
    selected = select_best(candidates, op_limit)
    archive = read_json(arm_dir / "archive.json")["elites"]
    iterations = run["budget"]["iterations"]
    if run["iterations_recorded"] != iterations:
        raise InputError(arm_dir / "run.json", f"records {run['iterations_recorded']} of "
                         f"{iterations} iterations: an interrupted run; rerun the arms stage")
    row = {
        "target": target, "engine": engine, "models": run["models"],
        "iterations": iterations,
        "iterations_recorded": run["iterations_recorded"],
        "best_train_mape": _finite(run["best"]["mape"]),
        "best_num_operations": run["best"]["num_operations"],
        "best_found_at_iteration": run["best"]["iteration_found"],
        # Did the search beat where it started? The seeds are the same for every arm.
        "seeds_best_train_mape": _finite(pd.to_numeric(seed_rows["mape"], errors="coerce").min()),
        "children_beating_seeds": int((child_scores > seed_best).sum()),
        "best_valid_mape": None if best.failed else _finite(best.metrics["mape"]),
        "best_valid_failure": best.failure,
        # The archive's best on validation under the op limit, chosen as the select stage does.
        "archive_selected_valid_mape": None if selected is None else _finite(selected.valid_mape),
        "archive_selected_num_operations": None if selected is None else selected.num_operations,
        "archive_programs": len(candidates),
        "children": run["children"],
        "children_scored": run["children_scored"],
        "evaluation_failures": run["evaluation_failures_by_reason"],
        "distinct_programs": int(children.loc[children["code_sha"] != "", "code_sha"].nunique()),
        "distinct_structures": int(
            children.loc[children["structure_sha"] != "", "structure_sha"].nunique()),
        "engine_failures": run["engine_failures_by_reason"],
        "llm_calls": run["llm_calls"],
        "tokens": run["tokens"],
        "wall_seconds": timing.get("wall_seconds"),
        "seconds_per_iteration": None if not iterations or timing.get("evolution_seconds") is None
        else round(timing["evolution_seconds"] / iterations, 2),
    }
    seeds = set(history.loc[history["kind"] == "seed", "code_sha"])
    overlap_input = {
        "programs": {e["code"] for e in archive},
        "new_programs": {e["code"] for e in archive if e.get("iteration_found", 0) > 0},
        "structures": {program_digests(e["code"])[1] for e in archive},
        "child_structures": set(children.loc[children["structure_sha"] != "", "structure_sha"])
        - {s for s in history.loc[history["kind"] == "seed", "structure_sha"]},
        "seeds": seeds,
    }
    return row, overlap_input


def overlap(target: str, arms: dict[str, dict]) -> dict:
    """What the arms of one target have in common (all pairs if more than two engines)."""
    engines = sorted(arms)
    pairs = []
    for i, a in enumerate(engines):
        for b in engines[i + 1:]:
            pairs.append({
                "engines": [a, b],
                "archive_programs": {a: len(arms[a]["programs"]), b: len(arms[b]["programs"])},
                # Same fitted program text in both archives (the seeds, refitted identically,
                # are usually among them).
                "shared_archive_programs": len(arms[a]["programs"] & arms[b]["programs"]),
                # The same, counting only programs the arms found (not seeds).
                "shared_archive_programs_found": len(arms[a]["new_programs"]
                                                     & arms[b]["new_programs"]),
                # Same formula shape (numeric constants ignored) in both archives.
                "shared_archive_structures": len(arms[a]["structures"] & arms[b]["structures"]),
                # Formula shapes both engines proposed during the run, seeds excluded.
                "shared_child_structures": len(arms[a]["child_structures"]
                                               & arms[b]["child_structures"]),
            })
    return {"target": target, "pairs": pairs}


def main() -> None:
    params = load_params()
    arms_params = section(params, "arms")
    engines = [str(e) for e in arms_params.get("engines", [])]
    if not engines:
        raise InputError("params.yaml arms.engines", "must list at least one engine")
    op_limit = int(section(params, "select")["max_operations"])
    names = available_features(read_json("data/feature_manifest.json"))
    rows, overlaps = [], []
    for target in params["targets"]:
        settings = EvaluatorSettings.from_params(params, target)
        valid = load_training_data(f"data/split/valid/{target}.parquet", target, names,
                                   decode_below=settings.decode_below,
                                   prefill_at_least=settings.prefill_at_least)
        per_engine = {}
        for engine in engines:
            row, overlap_input = arm_row(target, engine, Path("arms") / target / engine, valid,
                                         settings, op_limit)
            if row["iterations"] != int(arms_params["iterations"]):
                raise InputError(Path("arms") / target / engine / "run.json",
                                 f"budget {row['iterations']} iterations, params say "
                                 f"{arms_params['iterations']}: rerun the arms stage")
            rows.append(row)
            per_engine[engine] = overlap_input
        overlaps.append(overlap(target, per_engine))
    write_json("arms/comparison.json", {
        "question": QUESTION, "iterations": int(arms_params["iterations"]),
        "run_seed": int(arms_params["seed"]), "engines": engines, "op_limit": op_limit,
        "rows": rows, "overlap": overlaps})
    for row in rows:
        valid = row["best_valid_mape"]
        print(f"arms {row['target']} {row['engine']}: best train MAPE "
              f"{100 * row['best_train_mape']:.2f}% ({row['best_num_operations']} ops), valid "
              f"{'n/a' if valid is None else f'{100 * valid:.2f}%'}; {row['children_scored']}/"
              f"{row['iterations']} scored, {row['distinct_programs']} distinct programs, "
              f"engine failures {row['engine_failures']}")


if __name__ == "__main__":
    if len(sys.argv) != 1:
        sys.exit("usage: python -m stages.arms_compare")
    main()
