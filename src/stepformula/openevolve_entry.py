"""The file OpenEvolve loads as its evaluator: `evaluate(program_path)`.

OpenEvolve imports this file by path in its worker process. Scoring is stepformula.evaluator's;
this adds the MAP-Elites cell of the op count (`op_bin`), with the bin edges the evolve stage put
in the environment, so every program (failures too) carries both archive dimensions.
"""

import json
import os

from stepformula.evaluator import evaluate_program_path
from stepformula.evolution import OP_BINS_ENV_VAR, op_bin

_EDGES = tuple(json.loads(os.environ.get(OP_BINS_ENV_VAR, "[]")))


def evaluate(program_path):
    result = evaluate_program_path(program_path)
    result.metrics["op_bin"] = op_bin(result.metrics["num_operations"], _EDGES)
    return result
