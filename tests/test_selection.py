"""Selection on validation: eligibility under the op limit, the winner, the Pareto front."""

import numpy as np

from stepformula.evaluator import EvaluatorSettings, TrainingData
from stepformula.selection import Candidate, pareto_front, score_candidates, select_best


def cand(code, ops, mape, lam=0.01):
    score = None if mape is None else -mape - lam * ops
    return Candidate(code=code, runs=(1,), program_ids=("id",), train_mape=mape,
                     num_operations=ops, valid_mape=mape, valid_score=score, failure=None)


def test_best_is_under_the_op_limit_and_by_validation_fitness():
    pool = [cand("a", 35, 0.01), cand("b", 29, 0.20), cand("c", 5, 0.22), cand("d", 3, None)]
    # a is best but has 35 ops; b: -0.49, c: -0.27 -> c wins on fitness.
    assert select_best(pool, 30).code == "c"
    assert select_best([cand("a", 30, 0.01)], 30) is None  # 30 is not < 30


def test_ties_go_to_fewer_operations_then_text():
    pool = [cand("z", 4, 0.10, lam=0.0), cand("y", 4, 0.10, lam=0.0), cand("x", 6, 0.10, lam=0.0)]
    assert select_best(pool, 30).code == "y"


def test_pareto_front_keeps_only_undominated_programs():
    pool = [cand("a", 2, 0.5), cand("b", 4, 0.3), cand("c", 5, 0.4), cand("d", 9, 0.1),
            cand("e", 9, 0.2), cand("f", 1, None)]
    assert [c.code for c in pareto_front(pool)] == ["a", "b", "d"]


def test_scoring_on_validation_does_not_refit():
    x = np.linspace(1.0, 100.0, 50)
    data = TrainingData.from_arrays({"prefill_tokens": x, "scheduled_tokens": x}, 2.0 * x,
                                    feature_names=["prefill_tokens", "scheduled_tokens"],
                                    decode_below=0.05, prefill_at_least=0.25)
    code = 'def predict(f):\n    return 1.0 * f["prefill_tokens"]\n'
    [candidate] = score_candidates({code: {"runs": {1}, "ids": {"p"}, "train_mape": 0.5}}, data,
                                   EvaluatorSettings(lam=0.01, refit=True))
    assert candidate.valid_mape == 0.5  # a refit would have found 2.0 and MAPE 0
    assert candidate.num_operations == 1
