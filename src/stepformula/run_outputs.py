"""What a finished evolution run leaves in git: best program, MAP-Elites archive, history, metadata.

Everything here is a deterministic function of the run (no wall-clock values), so two runs with
the same params give byte-identical files; wall time goes to timing.json beside them.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pandas as pd

from .evaluator import EvaluatorSettings, TrainingData, evaluate_prepared
from .io import write_json, write_text
from .plots import write_csv

EVALUATION_FAILURES = [("refused", "refused"), ("nan_or_inf", "NaN"), ("nan_or_inf", "infinite"),
                       ("non_positive", "zero or negative"), ("exception", "exception"),
                       ("shape", "shape")]


def evaluation_failure_class(reason: str | None) -> str:
    for name, needle in EVALUATION_FAILURES:
        if needle in (reason or ""):
            return name
    return "other"


def _finite(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def elites(database) -> list[dict]:
    """Every program in a MAP-Elites cell of any island, ordered by island and cell."""
    found = []
    for island, cells in enumerate(database.island_feature_maps):
        for cell in sorted(cells):
            program = database.programs.get(cells[cell])
            if program is not None:
                found.append((island, cell, program))
    return found


def history_table(records: list[dict]) -> pd.DataFrame:
    """One row per journal record with the best-so-far columns the plots draw."""
    rows, best = [], None
    for record in records:
        metrics = record.get("metrics") or {}
        score = metrics.get("combined_score")
        failed = record["kind"] == "engine_failure" or bool(metrics.get("failed"))
        if record["kind"] != "engine_failure" and not failed and score is not None \
                and (best is None or score > best["combined_score"]):
            best = metrics
        reason = record.get("reason") if record["kind"] == "engine_failure" else (
            evaluation_failure_class(record.get("refusal")) if failed else "")
        rows.append({
            "iteration": record["iteration"], "kind": record["kind"],
            "engine": record.get("engine") or "", "accepted": not failed, "reason": reason,
            "mape": _finite(metrics.get("mape")), "num_operations": metrics.get("num_operations"),
            "combined_score": _finite(score),
            "best_combined_score": None if best is None else best["combined_score"],
            "best_mape": None if best is None else best["mape"],
            "best_num_operations": None if best is None else best["num_operations"],
            # Digests of the program text (engine failures have none): see journal.program_digests.
            "code_sha": record.get("code_sha") or "",
            "structure_sha": record.get("structure_sha") or ""})
    return pd.DataFrame(rows)


def improvements(records: list[dict]) -> list[dict]:
    """The records where the best training fitness so far improved (seeds included), in order:
    what the selection stage scores on validation to draw validation MAPE against iteration."""
    found, best = [], None
    for record in records:
        metrics = record.get("metrics") or {}
        score = metrics.get("combined_score")
        if record["kind"] == "engine_failure" or metrics.get("failed") or score is None \
                or record.get("code") is None:
            continue
        if best is None or score > best:
            best = score
            found.append(record)
    return found


def write_run_outputs(out_dir: Path, *, result, target: str, run_seed: int, settings,
                      evaluator_settings: EvaluatorSettings, train: TrainingData,
                      engines: dict[str, float]) -> dict:
    """Write best_program.py, archive.json, history.csv, improvements.json and run.json; return
    run.json's content."""
    out_dir = Path(out_dir)
    database = result.database
    scored = {}

    def fitted(program) -> dict:
        # The database keeps the text the engine wrote; its metrics are those of the refitted
        # constants. Scoring again gives the self-contained fitted text (deterministic).
        if program.id not in scored:
            evaluation = evaluate_prepared(program.code, train, evaluator_settings)
            scored[program.id] = {"code": evaluation.fitted_text or program.code,
                                  "failure": evaluation.failure}
        return scored[program.id]

    archive = []
    for island, cell, program in elites(database):
        metrics = {k: _finite(v) if isinstance(v, float) else v
                   for k, v in sorted(program.metrics.items())}
        archive.append({"island": island, "cell": cell, "program_id": program.id,
                        "iteration_found": program.iteration_found,
                        "generation": program.generation, "metrics": metrics,
                        "code": fitted(program)["code"]})
    best = database.get(database.best_program_id) if database.best_program_id else None
    if best is None:
        best = database.get_best_program()
    history = history_table(result.records)
    children = history[history["kind"] == "child"]
    engine_failures = history[history["kind"] == "engine_failure"]
    usage = Counter()
    for record in result.records:
        for key, value in (record.get("token_usage") or {}).items():
            if isinstance(value, (int, float)):
                usage[key] += value
    run = {
        "target": target, "run_seed": run_seed, "engine_weights": engines,
        "models": result.model_names,
        "budget": ({"generations": settings.generations, "population": settings.population,
                    "iterations": settings.iterations}
                   if settings.iterations_override is None else
                   {"generations": None, "population": None, "iterations": settings.iterations}),
        "iterations_recorded": int((history["kind"] != "seed").sum()),
        "llm_calls": int(len(children) + len(engine_failures)),
        "tokens": {k: int(v) for k, v in sorted(usage.items())},
        "children": int(len(children)),
        "children_scored": int(children["accepted"].sum()),
        # Distinct programs among the children (comments and formatting ignored), and distinct
        # formula shapes (numeric constants ignored too): how much the engine explored.
        "distinct_programs": int(children.loc[children["code_sha"] != "", "code_sha"].nunique()),
        "distinct_structures": int(
            children.loc[children["structure_sha"] != "", "structure_sha"].nunique()),
        "evaluation_failures_by_reason": dict(sorted(Counter(
            children.loc[~children["accepted"], "reason"]).items())),
        "engine_failures_by_reason": dict(sorted(Counter(engine_failures["reason"]).items())),
        "archive_cells": len(archive),
        "best": {"program_id": best.id, "iteration_found": best.iteration_found,
                 "mape": _finite(best.metrics.get("mape")),
                 "num_operations": best.metrics.get("num_operations"),
                 "combined_score": _finite(best.metrics.get("combined_score"))},
    }
    write_text(out_dir / "best_program.py", fitted(best)["code"])
    write_json(out_dir / "archive.json", {"target": target, "run_seed": run_seed,
                                          "dimensions": ["op_bin", "error_regime"],
                                          "op_bin_edges": list(settings.op_bin_edges),
                                          "elites": archive})
    write_csv(out_dir / "history.csv", history)
    write_json(out_dir / "improvements.json", [
        {"iteration": r["iteration"], "program_id": r["program_id"],
         "train_mape": _finite(r["metrics"].get("mape")),
         "num_operations": r["metrics"].get("num_operations"),
         "code": evaluate_prepared(r["code"], train, evaluator_settings).fitted_text or r["code"]}
        for r in improvements(result.records)])
    write_json(out_dir / "run.json", run)
    return run
