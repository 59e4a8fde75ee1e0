"""What the mutation engine is told: the task, the features with units and ranges, the language,
the op budget. OpenEvolve appends the parent, the best and diverse programs and the parent's last
evaluation artifact (what went wrong, or the fitted constants) to every prompt.

The FEATURES and OP_BUDGET lines have a fixed format that the offline engine parses, so the
language model and the symbolic control arm read the same facts.
"""

from __future__ import annotations

from .engines.offline import (feature_line, feature_scales_line, op_budget_line,
                              target_scale_line)

LANGUAGE = """\
Write the whole program: a module with `import numpy as np` and one function `def predict(f):`.
`f` is a dict of float64 numpy arrays, one per feature (all of the same length). Read a feature as
f["name"]. The body is assignments to local names and one final `return` of an array of predicted
step times in microseconds (every prediction must be finite and > 0).
Allowed: numeric constants; + - * /; x ** c with a literal c, |c| <= 4; unary minus; one
comparison (< <= > >=) inside np.where; np.where(cond, a, b); np.minimum(a, b); np.maximum(a, b);
np.log, np.log1p, np.sqrt, np.exp, np.abs. Nothing else: no imports besides numpy, no loops, no
other functions or attributes, no strings except feature names.
Numeric constants are refitted on the training data after you answer, so choose the structure;
constants only need the right order of magnitude.
Operations are counted: each + - * / **, unary minus, comparison, np function call counts 1;
features and constants count 0; a local assigned once counts once however often it is used."""


def typical_scales(features: dict, target) -> tuple[dict[str, float], float]:
    """Median non-zero magnitude of each feature and of the target: the order of magnitude a
    starting constant needs."""
    import numpy as np

    def typical(values) -> float:
        values = np.abs(np.asarray(values, dtype=float))
        values = values[np.isfinite(values) & (values > 0)]
        return float(np.median(values)) if values.size else 1.0

    return {name: typical(v) for name, v in features.items()}, typical(target)


def system_message(target: str, target_description: str, manifest: dict, op_budget: int,
                   lam: float, feature_scales: dict[str, float], target_scale: float) -> str:
    """The system prompt of every iteration for one target."""
    available = [f for f in manifest["features"] if f["available"]]
    rows = "\n".join(
        f"- {f['name']} ({f['unit']}; {f['min']:.6g} to {f['max']:.6g}): {f['derivation']}"
        for f in available)
    return (
        "You improve a compact formula that predicts one vLLM engine step on H100 GPUs.\n"
        f"Target: {target} in microseconds: {target_description}\n"
        f"Fitness: -MAPE - {lam} x operations (MAPE on training steps as a fraction). "
        f"Stay under {op_budget} operations.\n\n"
        f"Features:\n{rows}\n\n{LANGUAGE}\n\n"
        f"{feature_line([f['name'] for f in available])}\n{op_budget_line(op_budget)}\n"
        f"{feature_scales_line(feature_scales)}\n{target_scale_line(target_scale)}\n"
        "Answer with the complete program in one ```python fenced block.")
