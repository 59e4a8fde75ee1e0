"""A peer at equal budget: gplearn's genetic-programming SymbolicRegressor.

Same train split, same features, the same number of program evaluations as all evolution runs of
a target together (generations x population x runs), MAPE as its fitness, and the same op cap:
the final population's best program (by training MAPE) with fewer than `op_limit` functions is
the peer's answer. Its program is kept as gplearn prints it, e.g. `add(mul(X0, 0.5), X1)`, and
evaluated here with gplearn's own protected semantics, so the test stage needs no pickle.
gplearn has no constant refitting: its constants are whatever evolution found; that is the
method as published, not a handicap we added.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

FUNCTIONS = ("add", "sub", "mul", "div", "log", "sqrt", "abs", "max", "min", "neg")
_TOKEN = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*|-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|[(),])")


def _gplearn_mape():
    from gplearn.fitness import make_fitness

    def mape(y, y_pred, w):
        with np.errstate(all="ignore"):
            value = np.average(np.abs(y_pred - y) / y, weights=w)
        return float(value) if np.isfinite(value) else 1e9

    return make_fitness(function=mape, greater_is_better=False)


def num_functions(program) -> int:
    """gplearn function nodes: the same rule as our op count (terminals count 0)."""
    from gplearn.functions import _Function

    return sum(isinstance(node, _Function) for node in program.program)


def program_text(program) -> str:
    """gplearn's prefix program as text, like str(program) but with constants at full precision
    (gplearn prints 3 decimals, which would change the formula)."""
    from gplearn.functions import _Function

    out, pending = [], []
    for node in program.program:
        if isinstance(node, _Function):
            out.append(f"{node.name}(")
            pending.append(node.arity)
            continue
        out.append(f"X{node}" if isinstance(node, (int, np.integer)) else repr(float(node)))
        while pending:
            pending[-1] -= 1
            if pending[-1] == 0:
                pending.pop()
                out.append(")")
            else:
                out.append(", ")
                break
    return "".join(out)


def fit_peer(features: Mapping[str, np.ndarray], target: np.ndarray, feature_names: Sequence[str],
             evaluations: int, population: int, op_limit: int, seed: int) -> dict:
    """Run gplearn with `evaluations` program evaluations and return its answer under the cap."""
    from gplearn.genetic import SymbolicRegressor

    scored = np.isfinite(target) & (target > 0)
    X = np.column_stack([features[n][scored] for n in feature_names])
    y = target[scored]
    generations = max(1, evaluations // population)
    model = SymbolicRegressor(
        population_size=population, generations=generations, tournament_size=20,
        function_set=("add", "sub", "mul", "div", "log", "sqrt", "abs", "max", "min", "neg"),
        metric=_gplearn_mape(), parsimony_coefficient=0.001, const_range=(-1.0, 1.0),
        init_depth=(2, 5), p_crossover=0.7, p_subtree_mutation=0.1, p_hoist_mutation=0.05,
        p_point_mutation=0.1, max_samples=1.0, n_jobs=1, random_state=seed, verbose=0)
    model.fit(X, y)
    under_cap = [p for p in model._programs[-1] if p is not None and num_functions(p) < op_limit]
    best = min(under_cap, key=lambda p: (p.raw_fitness_, str(p)), default=None)
    names = {f"X{i}": n for i, n in enumerate(feature_names)}
    text = None if best is None else program_text(best)
    if text is not None:
        predicted = predict_peer(text, names, features)
        with np.errstate(all="ignore"):
            train_mape = float(np.mean(np.abs(predicted[scored] - y) / y))
    return {
        "method": "gplearn.SymbolicRegressor",
        "program": text,
        "variables": names,
        "num_operations": None if best is None else num_functions(best),
        "train_mape": None if best is None else train_mape,
        "evaluations": population * generations,
        "population": population, "generations": generations, "seed": seed,
    }


def _parse(tokens: list[str], position: int):
    token = tokens[position]
    if token in FUNCTIONS:
        if tokens[position + 1] != "(":
            raise ValueError(f"expected '(' after {token}")
        args, position = [], position + 2
        while True:
            node, position = _parse(tokens, position)
            args.append(node)
            if tokens[position] == ",":
                position += 1
            elif tokens[position] == ")":
                return (token, args), position + 1
            else:
                raise ValueError(f"unexpected {tokens[position]!r}")
    if re.fullmatch(r"X\d+", token):
        return ("var", token), position + 1
    return ("const", float(token)), position + 1


def predict_peer(program: str, variables: Mapping[str, str],
                 features: Mapping[str, np.ndarray]) -> np.ndarray:
    """Evaluate a gplearn program string with gplearn's protected functions."""
    tokens = _TOKEN.findall(program)
    if "".join(tokens) != re.sub(r"\s+", "", program):
        raise ValueError(f"cannot read gplearn program {program!r}")
    tree, end = _parse(tokens, 0)
    if end != len(tokens):
        raise ValueError(f"trailing text in gplearn program {program!r}")
    n = len(next(iter(features.values())))

    def run(node):
        kind, value = node
        if kind == "var":
            return np.asarray(features[variables[value]], dtype=float)
        if kind == "const":
            return np.full(n, value)
        a = [run(child) for child in value]
        with np.errstate(all="ignore"):
            if kind == "add":
                return a[0] + a[1]
            if kind == "sub":
                return a[0] - a[1]
            if kind == "mul":
                return a[0] * a[1]
            if kind == "div":  # gplearn: x1 / x2 where |x2| > 0.001, else 1
                return np.where(np.abs(a[1]) > 0.001, np.divide(a[0], a[1]), 1.0)
            if kind == "log":  # log|x| where |x| > 0.001, else 0
                return np.where(np.abs(a[0]) > 0.001, np.log(np.abs(a[0])), 0.0)
            if kind == "sqrt":
                return np.sqrt(np.abs(a[0]))
            if kind == "abs":
                return np.abs(a[0])
            if kind == "neg":
                return -a[0]
            if kind == "max":
                return np.maximum(a[0], a[1])
            return np.minimum(a[0], a[1])

    return np.broadcast_to(run(tree), (n,)).astype(float)
