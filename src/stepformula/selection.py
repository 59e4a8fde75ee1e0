"""Selection on the validation split: every elite of every run, one winner per target.

Each elite's program carries the constants fitted on train; here it is scored on validation as
it is (no refit: validation must not tune anything). Programs at or over the op limit are not
eligible. The winner has the best validation fitness, -MAPE - lambda x ops (the evolution's own
trade-off, measured on unseen steps); ties go to fewer operations, then to the program text.
The validation Pareto front (ops vs MAPE) shows what every other size would have cost.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from .evaluator import EvaluatorSettings, TrainingData, evaluate_prepared
from .io import read_json


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One distinct program from the runs' archives, scored on validation."""
    code: str
    runs: tuple[int, ...]
    program_ids: tuple[str, ...]
    train_mape: float | None
    num_operations: int
    valid_mape: float | None
    valid_score: float | None
    failure: str | None

    def row(self) -> dict:
        return {"runs": list(self.runs), "program_ids": list(self.program_ids),
                "num_operations": self.num_operations, "train_mape": self.train_mape,
                "valid_mape": self.valid_mape, "valid_score": self.valid_score,
                "failure": self.failure, "code": self.code}


def read_archives(paths: list[Path]) -> dict[str, dict]:
    """Distinct programs (by fitted code) across archives, with the runs that found them."""
    found: dict[str, dict] = {}
    for path in sorted(paths):
        archive = read_json(path)
        for elite in archive["elites"]:
            entry = found.setdefault(elite["code"], {"runs": set(), "ids": set(),
                                                     "train_mape": elite["metrics"].get("mape")})
            entry["runs"].add(int(archive["run_seed"]))
            entry["ids"].add(elite["program_id"])
    return found


def score_candidates(archives: dict[str, dict], valid: TrainingData,
                     settings: EvaluatorSettings) -> list[Candidate]:
    no_refit = dataclasses.replace(settings, refit=False)
    candidates = []
    for code in sorted(archives):
        entry = archives[code]
        evaluation = evaluate_prepared(code, valid, no_refit)
        metrics = evaluation.metrics
        failed = evaluation.failed
        candidates.append(Candidate(
            code=code, runs=tuple(sorted(entry["runs"])), program_ids=tuple(sorted(entry["ids"])),
            train_mape=entry["train_mape"], num_operations=int(metrics["num_operations"]),
            valid_mape=None if failed else metrics["mape"],
            valid_score=None if failed else metrics["combined_score"],
            failure=evaluation.failure))
    return candidates


def eligible(candidates: list[Candidate], max_operations: int) -> list[Candidate]:
    return [c for c in candidates if c.valid_score is not None and c.num_operations < max_operations
            and math.isfinite(c.valid_mape)]


def select_best(candidates: list[Candidate], max_operations: int) -> Candidate | None:
    pool = eligible(candidates, max_operations)
    if not pool:
        return None
    return min(pool, key=lambda c: (-c.valid_score, c.num_operations, c.code))


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """Programs no other program beats on both ops (fewer or equal) and validation MAPE (lower)."""
    scored = sorted((c for c in candidates if c.valid_mape is not None),
                    key=lambda c: (c.num_operations, c.valid_mape, c.code))
    front, best = [], math.inf
    for candidate in scored:
        if candidate.valid_mape < best:
            front.append(candidate)
            best = candidate.valid_mape
    return front
