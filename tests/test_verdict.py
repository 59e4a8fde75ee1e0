"""The verdict's status rules (stepformula.verdict)."""

import pytest

from stepformula.verdict import Budget, Thresholds, status, verdict

LLM = {"offline": 0.5, "local": 0.5}
FULL = Budget(generations=100, population=50, runs=3, engine=LLM, models=["x"])
SMALL = Budget(generations=20, population=50, runs=3, engine=LLM, models=["x"])
ONE_RUN = Budget(generations=100, population=50, runs=1, engine=LLM, models=["x"])
NO_LLM = Budget(generations=100, population=50, runs=3, engine={"offline": 1.0}, models=["x"])
T = Thresholds()


@pytest.mark.parametrize("mape, ops, budget, expected", [
    (0.28, 10, FULL, "inconclusive"),            # between the thresholds at full budget
    (0.35, 10, SMALL, "insufficient-budget"),    # above 30% but below the seed's budget
    (0.35, 10, FULL, "refuted"),
    (0.35, 10, ONE_RUN, "insufficient-budget"),  # 100 generations but one run is not the budget
    (0.20, 10, SMALL, "supported"),              # a success needs no minimum budget
    (0.20, 10, FULL, "supported"),
    (0.25, 10, FULL, "inconclusive"),            # "< 25%" is strict
    (0.30, 10, FULL, "inconclusive"),            # "> 30%" is strict
    (0.20, 30, FULL, "refuted"),                 # 30 operations is not "< 30"
    (0.20, 30, SMALL, "insufficient-budget"),
    (None, None, FULL, "refuted"),               # nothing under the op limit after full budget
    (None, None, SMALL, "insufficient-budget"),
    (float("nan"), 5, FULL, "refuted"),
    (0.35, 10, NO_LLM, "insufficient-budget"),   # no language model: no LLM-guided budget
    (0.28, 10, NO_LLM, "insufficient-budget"),
    (0.20, 10, NO_LLM, "supported"),             # but a formula found is a formula found
])
def test_status_rules(mape, ops, budget, expected):
    assert status(mape, ops, budget, T) == expected


def test_verdict_document_states_hypothesis_thresholds_budget_and_result():
    document = verdict("period_us", 0.04, 7, SMALL, T, "a note")
    assert document["status"] == "supported"
    assert "< 30 operations" in document["hypothesis"] and "period_us" in document["hypothesis"]
    assert document["thresholds"]["supported_below"] == 0.25
    assert document["budget"]["generations"] == 20 and document["full_budget"] is False
    assert document["result"] == {"test_mape": 0.04, "num_operations": 7}


def test_verdict_says_whether_a_language_model_was_in_the_loop():
    document = verdict("duration_us", 0.2, 5, NO_LLM, T, "")
    assert "no language model" in document["engines_note"]
    assert document["language_model_in_loop"] is False and document["full_budget"] is False
    assert "language model in the loop" in verdict("duration_us", 0.2, 5, FULL, T, "")["engines_note"]
