"""The verdict on the hypothesis, from the test MAPE of the selected formula and the budget run.

Hypothesis: an LLM-guided evolutionary search finds a formula with fewer than `op_limit`
operations whose per-step test MAPE is below `supported_below` (25%). It is refuted if the best
program is above `refuted_above` (30%) after at least the seed's budget (100 generations x 3
independent runs).

The seed's budget is a budget of LLM-guided search: runs whose engine mix has no language model
(the symbolic offline mutator alone, the study's control arm) never count as the full budget, so
they can support the hypothesis (a formula under the thresholds exists and evolution finds it;
the note says no language model was involved) but never refute it.

Status rules, in order:
* no selected formula under the op limit -> refuted at full budget, else insufficient-budget;
* MAPE < supported_below -> supported (a success needs no minimum budget);
* MAPE > refuted_above -> refuted at full budget, insufficient-budget below it (more search
  could still find one);
* otherwise (between the thresholds) -> inconclusive at full budget, insufficient-budget below.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

HYPOTHESIS = ("An LLM-guided evolutionary search (OpenEvolve: MAP-Elites with LLM mutations) finds "
              "a compact formula (< {op_limit} operations) that predicts the {target} of one vLLM "
              "engine step from the raw features with < {supported:.0f}% per-step test MAPE; it is "
              "refuted if the best program is > {refuted:.0f}% after {generations} generations x "
              "{runs} independent runs.")
STATUSES = ("supported", "refuted", "inconclusive", "insufficient-budget")
LLM_ENGINES = ("openai", "local")


@dataclass(frozen=True)
class Thresholds:
    """The numbers the hypothesis states."""
    supported_below: float = 0.25
    refuted_above: float = 0.30
    op_limit: int = 30
    full_generations: int = 100
    full_runs: int = 3


@dataclass(frozen=True)
class Budget:
    """What was actually run."""
    generations: int
    population: int
    runs: int
    engine: dict
    models: list


def full_budget(budget: Budget, thresholds: Thresholds) -> bool:
    """The seed's budget of LLM-guided search: generations x runs, with a language model in the
    engine mix."""
    return (budget.generations >= thresholds.full_generations
            and budget.runs >= thresholds.full_runs and language_model_in_loop(budget))


def language_model_in_loop(budget: Budget) -> bool:
    return any(budget.engine.get(engine, 0) > 0 for engine in LLM_ENGINES)


def status(test_mape: float | None, num_operations: int | None, budget: Budget,
           thresholds: Thresholds) -> str:
    """One of STATUSES, by the rules in the module docstring."""
    full = full_budget(budget, thresholds)
    if test_mape is None or num_operations is None or not math.isfinite(test_mape) \
            or num_operations >= thresholds.op_limit:
        return "refuted" if full else "insufficient-budget"
    if test_mape < thresholds.supported_below:
        return "supported"
    if test_mape > thresholds.refuted_above:
        return "refuted" if full else "insufficient-budget"
    return "inconclusive" if full else "insufficient-budget"


def language_model_note(budget: Budget) -> str:
    """Whether a language model took part: the hypothesis is about LLM-guided search, and a
    result from the symbolic control arm alone shows what the search space holds, not what the
    language model adds (the arms comparison answers that)."""
    weights = {k: v for k, v in budget.engine.items() if v > 0}
    if language_model_in_loop(budget):
        return f"language model in the loop: engines {weights}"
    return ("no language model in the loop: these runs used the symbolic offline mutator only "
            "(the control arm), so they count as no LLM-guided budget: they can show that a "
            "formula exists and evolution finds it, but cannot refute the hypothesis; see the "
            "arms comparison for what a language model changes")


def verdict(target: str, test_mape: float | None, num_operations: int | None, budget: Budget,
            thresholds: Thresholds, note: str) -> dict:
    """The verdict document for one target."""
    return {
        "engines_note": language_model_note(budget),
        "target": target,
        "hypothesis": HYPOTHESIS.format(op_limit=thresholds.op_limit, target=target,
                                        supported=100 * thresholds.supported_below,
                                        refuted=100 * thresholds.refuted_above,
                                        generations=thresholds.full_generations,
                                        runs=thresholds.full_runs),
        "thresholds": asdict(thresholds),
        "budget": asdict(budget),
        "full_budget": full_budget(budget, thresholds),
        "language_model_in_loop": language_model_in_loop(budget),
        "result": {"test_mape": test_mape, "num_operations": num_operations},
        "status": status(test_mape, num_operations, budget, thresholds),
        "note": note,
    }
