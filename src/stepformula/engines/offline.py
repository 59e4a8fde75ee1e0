"""The `offline` engine: a symbolic mutation operator that answers OpenEvolve without a language model.

It is the control arm of the study (evolution with blind, structure-only mutations) and the fast,
reproducible default. OpenEvolve talks to it as to any model: `OfflineMutator` implements
`openevolve.llm.base.LLMInterface`, and `make_offline_mutator` is the picklable factory to put in
`LLMModelConfig(init_client=make_offline_mutator)`.

One call
--------
1. Read the prompt (system message and user message): the parent program is the first fenced
   block after the `# Current Program` heading (OpenEvolve's user templates); every other fenced
   block that is a valid program (top programs, inspirations) is a crossover donor; the
   placeholder block `# Your rewritten program here` is not a program and fails the check.
   Optional configuration lines (one format each, written and parsed by the helpers below, so
   the prompt writer and the mutator share it):
       FEATURES: prefill_tokens, decode_tokens, kv_sum          (`feature_line`)
       OP_BUDGET: 24                                            (`op_budget_line`)
       FEATURE_SCALES: prefill_tokens=512, kv_sum=2e+05         (`feature_scales_line`)
       TARGET_SCALE: 2.5e+04                                    (`target_scale_line`)
   Each is looked up in the system message first, then in the user message. Without a FEATURES
   line the allowed features are those the parent and the donors read.
2. With `random.Random` seeded from (seed, prompt digest), pick an operator (weights below), apply
   it to a fresh parse of the parent, drop locals left unused, and re-render the program: only
   the function text is replaced, so the module docstring, comments, the import and the
   EVOLVE-BLOCK markers outside the function stay verbatim.
3. Accept the candidate only if it passes `check_program` with the same features, differs from
   the parent, respects the operation budget and is no less finite than the parent on a fixed
   positive probe batch. Otherwise retry (another draw) up to `max_attempts` times; then fall
   back to the parent with one constant perturbed, then to a fresh 3-feature linear model. An
   invalid program is never returned.

Operators (`OPERATORS`; which one produced the last answer is in `last_operator`)
----------------------------------------------------------------------------------
- add_term:          E -> E + c * f[x]   or   E + c * f[x] * f[y]   (E: usually the returned expression)
- remove_term:       an `a + b` / `a - b` node -> a or b
- swap_feature:      one f["x"] read -> f["y"] (another allowed feature)
- wrap_unary:        E -> np.log1p(...) or np.sqrt(...) of E (a bare feature, features being
                     non-negative) or of np.abs(E) / np.maximum(E, 0.0) (domain safety), times a
                     coefficient unless E is already a factor of a product. np.exp is never
                     introduced: it overflows on token counts.
- regime_split:      E -> np.where(f[x] > t, E, E') with E' a mutated copy of E (a term added or
                     removed, a feature swapped, or its coefficients moved)
- scale_by_factor:   E -> E * (1 + c * f[x])
- replace_operator:  + <-> -   or   * <-> /
- crossover:         graft a sub-expression of a donor program (its locals inlined, so the graft is
                     self-contained) into the parent, as an added term or in place of a sub-expression
- perturb_constants: move one or two constants; thresholds and exponents are preferred, because
                     the evaluator refits only coefficients
- unwrap:            a call -> one of its numeric arguments (np.where -> a branch), a product or
                     quotient -> one factor, -E -> E

Operation budget: when the parent has at least OP_BUDGET operations the growing operators are
switched off and the shrinking ones (remove_term, unwrap) weigh more, and a candidate may never
have more operations than max(OP_BUDGET, parent's count), so the search does not only grow.

Starting constants are scale-aware when the prompt gives scales (a new term starts at ~10% of
the typical output, a regime threshold near the feature's typical value); otherwise a new
coefficient starts at 1e-3. The evaluator refits coefficients anyway; thresholds it does not.

Usage report: `last_usage` is all zeros. No model runs and no tokens are spent; a word count
would be mistaken for tokens in the cost comparison between engines.

Determinism: the answer is a function of (system message, user message, seed) only: every
choice goes through one `random.Random`, nothing iterates over a set, and the probe data are
fixed. Without a `seed` keyword the mutator draws one from its own stream (seeded from
`model_cfg.random_seed` when present).
"""

from __future__ import annotations

import ast
import copy
import hashlib
import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from openevolve.llm.base import LLMInterface

from stepformula.program import CheckedProgram, Limits, ProgramRefused, check_program

MODEL_NAME = "offline-symbolic"

OPERATORS = (
    "add_term", "remove_term", "swap_feature", "wrap_unary", "regime_split",
    "scale_by_factor", "replace_operator", "crossover", "perturb_constants", "unwrap",
)
FALLBACK_PERTURB = "fallback_perturb"
FALLBACK_LINEAR = "fallback_linear"

GROWING_OPERATORS = ("add_term", "wrap_unary", "regime_split", "scale_by_factor")
SHRINKING_OPERATORS = ("remove_term", "unwrap")
# Relative frequencies when the parent is under its budget. Adding terms is the main way to
# discover structure; crossover reuses what already scored well elsewhere.
BASE_WEIGHTS: dict[str, float] = {
    "add_term": 3.0, "remove_term": 1.5, "swap_feature": 2.0, "wrap_unary": 1.5,
    "regime_split": 1.0, "scale_by_factor": 1.5, "replace_operator": 1.0, "crossover": 2.0,
    "perturb_constants": 1.0, "unwrap": 1.0,
}
SHRINK_BOOST = 3.0

START_MARKER = "# EVOLVE-BLOCK-START"
END_MARKER = "# EVOLVE-BLOCK-END"
DEFAULT_COEFFICIENT = 1e-3
# Exponents perturb_constants may pick (all within the checker's |exponent| <= 4; no negative
# ones: a feature can be 0).
EXPONENTS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
PROBE_ROWS = 32
_MATERIAL_CACHE_SIZE = 512
_PARENT_CACHE_SIZE = 64

# ---------------------------------------------------------------------------------------------
# Prompt lines shared with the prompt writer
# ---------------------------------------------------------------------------------------------

_FEATURES_KEY = "FEATURES"
_OP_BUDGET_KEY = "OP_BUDGET"
_FEATURE_SCALES_KEY = "FEATURE_SCALES"
_TARGET_SCALE_KEY = "TARGET_SCALE"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _line_pattern(key: str) -> re.Pattern[str]:
    return re.compile(rf"^[ \t]*{key}:[ \t]*(.*?)[ \t]*$", re.MULTILINE)


_LINE_PATTERNS = {key: _line_pattern(key) for key in
                  (_FEATURES_KEY, _OP_BUDGET_KEY, _FEATURE_SCALES_KEY, _TARGET_SCALE_KEY)}


def _first_value(key: str, text: str) -> str | None:
    match = _LINE_PATTERNS[key].search(text or "")
    return None if match is None else match.group(1)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"feature name {name!r} is not an identifier")
    return name


def feature_line(names: Sequence[str]) -> str:
    """`FEATURES: a, b, c`: the features a program may read, in the given order."""
    names = [_check_name(n) for n in names]
    if not names:
        raise ValueError("at least one feature name is needed")
    return f"{_FEATURES_KEY}: " + ", ".join(names)


def parse_feature_line(text: str) -> tuple[str, ...] | None:
    """The names of the first FEATURES line in `text` (invalid names skipped), or None."""
    value = _first_value(_FEATURES_KEY, text)
    if value is None:
        return None
    names: list[str] = []
    for part in value.split(","):
        name = part.strip()
        if _NAME.match(name) and name not in names:
            names.append(name)
    return tuple(names) or None


def op_budget_line(budget: int) -> str:
    """`OP_BUDGET: N`: the operation count above which the mutator stops growing programs."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ValueError(f"operation budget must be a non-negative int, got {budget!r}")
    return f"{_OP_BUDGET_KEY}: {budget}"


def parse_op_budget_line(text: str) -> int | None:
    value = _first_value(_OP_BUDGET_KEY, text)
    if value is None or not value.isdigit():
        return None
    return int(value)


def _positive_finite(value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"a scale must be positive and finite, got {value!r}")
    return value


def feature_scales_line(scales: Mapping[str, float]) -> str:
    """`FEATURE_SCALES: a=512, b=2e+05`: a typical (e.g. median non-zero) value per feature."""
    parts = [f"{_check_name(name)}={_positive_finite(value):.4g}" for name, value in scales.items()]
    if not parts:
        raise ValueError("at least one feature scale is needed")
    return f"{_FEATURE_SCALES_KEY}: " + ", ".join(parts)


def parse_feature_scales_line(text: str) -> dict[str, float] | None:
    value = _first_value(_FEATURE_SCALES_KEY, text)
    if value is None:
        return None
    scales: dict[str, float] = {}
    for part in value.split(","):
        name, _, number = part.partition("=")
        name = name.strip()
        try:
            scale = _positive_finite(number)
        except ValueError:
            continue
        if _NAME.match(name):
            scales[name] = scale
    return scales or None


def target_scale_line(value: float) -> str:
    """`TARGET_SCALE: 2.5e+04`: a typical value of the predicted step time (µs)."""
    return f"{_TARGET_SCALE_KEY}: {_positive_finite(value):.4g}"


def parse_target_scale_line(text: str) -> float | None:
    value = _first_value(_TARGET_SCALE_KEY, text)
    try:
        return None if value is None else _positive_finite(value)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# Reading the prompt
# ---------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^```([^\s`]*)[ \t]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_CURRENT_PROGRAM = re.compile(r"^#[ \t]*Current Program[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class MutationRequest:
    """What the mutator read from one prompt: the parent, the donors and the configuration lines."""

    parent_text: str | None
    donor_texts: tuple[str, ...]
    feature_names: tuple[str, ...]
    op_budget: int | None
    feature_scales: Mapping[str, float] = field(default_factory=dict)
    target_scale: float | None = None


def fenced_blocks(text: str) -> list[tuple[int, str]]:
    """(offset, body) of every fenced code block whose fences start a line, in text order."""
    return [(m.start(), m.group(2).rstrip("\n")) for m in _FENCE.finditer(text or "")]


def _features_read(text: str) -> list[str]:
    """The f["name"] reads of a program text in order of appearance ([] if it does not parse)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    reads = sorted((node.lineno, node.col_offset, node.slice.value) for node in ast.walk(tree) if _is_feature(node))
    names: list[str] = []
    for _, _, name in reads:
        if name not in names:
            names.append(name)
    return names


def read_request(system_message: str, user_message: str) -> MutationRequest:
    """Find the parent, the donor programs and the configuration lines in a prompt."""
    blocks = fenced_blocks(user_message)
    parent_index = None
    heading = _CURRENT_PROGRAM.search(user_message or "")
    if heading is not None:
        parent_index = next((i for i, (offset, _) in enumerate(blocks) if offset > heading.start()), None)
    if parent_index is None:
        # No heading (a custom template): the last block that defines predict.
        parent_index = next((i for i in reversed(range(len(blocks))) if "def predict" in blocks[i][1]), None)
    parent_text = None if parent_index is None else blocks[parent_index][1]
    donors: list[str] = []
    for i, (_, body) in enumerate(blocks):
        if i != parent_index and "def predict" in body and body != parent_text and body not in donors:
            donors.append(body)

    def lookup(parse: Callable[[str], Any]) -> Any:
        found = parse(system_message or "")
        return found if found is not None else parse(user_message or "")

    features = lookup(parse_feature_line)
    if features is None:
        # Fall back on what the programs in the prompt read: they were all accepted by the evaluator.
        names: list[str] = []
        for text in ([parent_text] if parent_text else []) + donors:
            names.extend(n for n in _features_read(text) if n not in names)
        features = tuple(names)
    return MutationRequest(
        parent_text=parent_text,
        donor_texts=tuple(donors),
        feature_names=features,
        op_budget=lookup(parse_op_budget_line),
        feature_scales=lookup(parse_feature_scales_line) or {},
        target_scale=lookup(parse_target_scale_line),
    )


# ---------------------------------------------------------------------------------------------
# AST building blocks
# ---------------------------------------------------------------------------------------------


def _number(value: float) -> ast.expr:
    """A literal rounded to 4 significant digits; a negative one as `-literal` (one constant)."""
    value = float(f"{float(value):.4g}")
    if value < 0:
        return ast.UnaryOp(op=ast.USub(), operand=ast.Constant(value=-value))
    return ast.Constant(value=value)


def _feature(name: str) -> ast.expr:
    return ast.Subscript(value=ast.Name(id="f", ctx=ast.Load()), slice=ast.Constant(value=name), ctx=ast.Load())


def _np_call(function: str, *arguments: ast.expr) -> ast.expr:
    return ast.Call(func=ast.Attribute(value=ast.Name(id="np", ctx=ast.Load()), attr=function, ctx=ast.Load()),
                    args=list(arguments), keywords=[])


def _binary(left: ast.expr, op: ast.operator, right: ast.expr) -> ast.expr:
    return ast.BinOp(left=left, op=op, right=right)


def _is_feature(node: ast.AST) -> bool:
    return (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "f"
            and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str))


def _is_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return isinstance(node, ast.Constant) and type(node.value) in (int, float)


def _depends_on_input(node: ast.AST) -> bool:
    """Reads a feature or a local (locals nearly always hold feature-dependent values)."""
    return any(_is_feature(n) or (isinstance(n, ast.Name) and n.id not in ("f", "np")) for n in ast.walk(node))


def _body_statements(function: ast.FunctionDef) -> list[ast.stmt]:
    body = function.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[1:]
    return body


def _function_def(arguments: ast.arguments, body: list[ast.stmt]) -> ast.FunctionDef:
    """`def predict(...)` with `body` (type_params only where the running Python has them)."""
    extra = {"type_params": []} if "type_params" in ast.FunctionDef._fields else {}
    # A line number, because ast.unparse looks up type comments by it.
    return ast.FunctionDef(name="predict", args=arguments, body=body, decorator_list=[], returns=None,
                           type_comment=None, lineno=1, col_offset=0, **extra)


def _find_function(tree: ast.Module) -> ast.FunctionDef:
    return next(s for s in tree.body if isinstance(s, ast.FunctionDef))


@dataclass
class _Slot:
    """A place in the tree that holds an expression: `holder.field` or `holder.field[index]`."""

    holder: ast.AST
    field: str
    index: int | None
    is_condition: bool  # holds a comparison (np.where's first argument), not a number
    in_comparison: bool  # inside a comparison: its literals are thresholds
    is_statement_value: bool

    def get(self) -> ast.expr:
        value = getattr(self.holder, self.field)
        return value if self.index is None else value[self.index]

    def set(self, node: ast.expr) -> None:
        if self.index is None:
            setattr(self.holder, self.field, node)
        else:
            getattr(self.holder, self.field)[self.index] = node

    @property
    def is_number(self) -> bool:
        """A numeric expression outside comparisons: where terms and wrappers may go."""
        return not self.is_condition and not self.in_comparison


def _walk_slots(slot: _Slot, out: list[_Slot]) -> None:
    """Append `slot` and every expression slot below it (exponents of ** excluded: literal only)."""
    out.append(slot)
    node = slot.get()
    inside = slot.in_comparison
    if _is_literal(node):
        return
    if isinstance(node, ast.BinOp):
        _walk_slots(_Slot(node, "left", None, False, inside, False), out)
        if not isinstance(node.op, ast.Pow):
            _walk_slots(_Slot(node, "right", None, False, inside, False), out)
    elif isinstance(node, ast.UnaryOp):
        _walk_slots(_Slot(node, "operand", None, False, inside, False), out)
    elif isinstance(node, ast.Compare):
        _walk_slots(_Slot(node, "left", None, False, True, False), out)
        for i in range(len(node.comparators)):
            _walk_slots(_Slot(node, "comparators", i, False, True, False), out)
    elif isinstance(node, ast.Call):
        is_where = isinstance(node.func, ast.Attribute) and node.func.attr == "where"
        for i in range(len(node.args)):
            _walk_slots(_Slot(node, "args", i, is_where and i == 0, inside, False), out)


def _function_slots(function: ast.FunctionDef) -> tuple[list[_Slot], _Slot]:
    """All expression slots of predict's body in statement order, and the returned expression's slot."""
    slots: list[_Slot] = []
    condition_locals: set[str] = set()  # membership only, never iterated
    root = None
    for statement in _body_statements(function):
        value = statement.value
        is_condition = isinstance(value, ast.Compare) or (isinstance(value, ast.Name) and value.id in condition_locals)
        slot = _Slot(statement, "value", None, is_condition, False, True)
        _walk_slots(slot, slots)
        if isinstance(statement, ast.Assign):
            name = statement.targets[0].id
            if is_condition:
                condition_locals.add(name)
            else:
                condition_locals.discard(name)
        elif isinstance(statement, ast.Return):
            root = slot
    assert root is not None, "a checked parent ends with a return"
    return slots, root


def _region_slots(expression: ast.expr) -> tuple[list[_Slot], _Slot, ast.Expression]:
    """Slots of a detached expression (held by an ast.Expression, so its root can be replaced too)."""
    holder = ast.Expression(body=expression)
    root = _Slot(holder, "body", None, False, False, True)
    slots: list[_Slot] = []
    _walk_slots(root, slots)
    return slots, root, holder


def _names_read(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id not in ("f", "np")}


def _drop_dead_assignments(function: ast.FunctionDef) -> None:
    """Remove assignments whose value is never read (a removed term can orphan a local, which the
    checker refuses). Backward liveness over the straight-line body handles reassignment."""
    statements = _body_statements(function)
    prefix = function.body[:len(function.body) - len(statements)]
    live: set[str] = set()  # membership only
    kept: list[ast.stmt] = []
    for statement in reversed(statements):
        if isinstance(statement, ast.Assign):
            name = statement.targets[0].id
            if name not in live:
                continue
            live.discard(name)
        live |= _names_read(statement.value)
        kept.append(statement)
    function.body = prefix + kept[::-1]


class _Inliner(ast.NodeTransformer):
    """Replaces reads of locals by fresh parses of their defining expressions (parsing is faster
    than deep-copying an AST)."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def visit_Name(self, node: ast.Name) -> ast.expr:
        if node.id in self.env:
            return ast.parse(f"({self.env[node.id]})", mode="eval").body
        return node


def _inlined_return(function: ast.FunctionDef) -> ast.expr:
    """predict's returned expression with every local substituted: self-contained material.
    Rewrites `function` in place (pass a private parse)."""
    env: dict[str, str] = {}
    for statement in _body_statements(function):
        holder = ast.Expression(body=statement.value)
        value = _Inliner(env).visit(holder).body
        if isinstance(statement, ast.Return):
            return value
        env[statement.targets[0].id] = ast.unparse(value)
    raise AssertionError("a checked program ends with a return")


_MAX_DONOR_NODES = 300


def donor_material(program_text: str) -> list[str]:
    """Feature-dependent numeric sub-expressions of a (checked) donor program, locals inlined, as
    source texts in traversal order."""
    expression = _inlined_return(_find_function(ast.parse(program_text)))
    if sum(1 for _ in ast.walk(expression)) > _MAX_DONOR_NODES:
        return []
    slots: list[_Slot] = []
    _walk_slots(_Slot(ast.Expression(body=expression), "body", None, False, False, True), slots)
    material: list[str] = []
    for slot in slots:
        node = slot.get()
        if slot.is_number and any(_is_feature(n) for n in ast.walk(node)):
            text = ast.unparse(node)
            if text not in material:
                material.append(text)
    return material


# ---------------------------------------------------------------------------------------------
# One mutation: the context and the operators
# ---------------------------------------------------------------------------------------------


@dataclass
class _Context:
    """Everything an operator may use: the RNG, the allowed features, scales and donor material."""

    rng: random.Random
    features: tuple[str, ...]
    feature_scales: Mapping[str, float]
    target_scale: float | None
    donor_texts: tuple[str, ...]
    donor_material: Callable[[str], list[str]]  # [] for a donor that fails the check
    thresholds: dict[str, list[float]]  # per feature, thresholds the parent already compares it with

    def choose_feature(self) -> str:
        return self.rng.choice(self.features)

    def term_coefficient(self, names: Sequence[str]) -> float:
        """A new term's starting coefficient: ~10% of the typical output when scales are known."""
        scales = [self.feature_scales.get(n) for n in names]
        if self.target_scale and all(scales):
            return 0.1 * self.target_scale / math.prod(scales)
        return DEFAULT_COEFFICIENT

    def factor_coefficient(self, name: str) -> float:
        """c of `(1 + c * f[x])`: a 10% effect at the feature's typical value when known."""
        scale = self.feature_scales.get(name)
        return 0.1 / scale if scale else DEFAULT_COEFFICIENT

    def threshold(self, name: str) -> float:
        """A regime boundary for f[name]. Thresholds are not refitted, so this is the only place
        they are chosen: near the typical value (when known), near one the parent already uses,
        else log-uniform over token-count-like values 1..4096."""
        scale = self.feature_scales.get(name)
        if scale:
            return scale * 2.0 ** self.rng.uniform(-2.0, 2.0)
        known = self.thresholds.get(name)
        if known:
            return self.rng.choice(known) * 2.0 ** self.rng.uniform(-1.0, 1.0)
        return 2.0 ** self.rng.uniform(0.0, 12.0)


def _pick_target(ctx: _Context, slots: list[_Slot], root: _Slot) -> _Slot | None:
    """Where a term or wrapper goes: half of the time the returned expression, else any number slot."""
    numbers = [s for s in slots if s.is_number]
    if not numbers:
        return None
    if ctx.rng.random() < 0.5:
        return root
    return ctx.rng.choice(numbers)


def _op_add_term(ctx: _Context, slots: list[_Slot], root: _Slot) -> str | None:
    target = _pick_target(ctx, slots, root)
    if target is None:
        return None
    names = [ctx.choose_feature()]
    if len(ctx.features) > 1 and ctx.rng.random() < 0.3:
        names.append(ctx.rng.choice([n for n in ctx.features if n != names[0]]))
    term = _number(ctx.term_coefficient(names))
    for name in names:
        term = _binary(term, ast.Mult(), _feature(name))
    target.set(_binary(target.get(), ast.Add(), term))
    return f"add_term: + {ast.unparse(term)}"


def _op_remove_term(ctx: _Context, slots: list[_Slot], root: _Slot) -> str | None:
    candidates = [s for s in slots if not s.is_condition and isinstance(s.get(), ast.BinOp)
                  and isinstance(s.get().op, (ast.Add, ast.Sub))]
    if not candidates:
        return None
    slot = ctx.rng.choice(candidates)
    node = slot.get()
    kept, dropped = (node.left, node.right) if ctx.rng.random() < 0.5 else (node.right, node.left)
    slot.set(kept)
    return f"remove_term: drop {ast.unparse(dropped)}"


def _op_swap_feature(ctx: _Context, slots: list[_Slot], root: _Slot) -> str | None:
    candidates = [s for s in slots if _is_feature(s.get())]
    if not candidates or len(ctx.features) < 2:
        return None
    node = ctx.rng.choice(candidates).get()
    old = node.slice.value
    new = ctx.rng.choice([n for n in ctx.features if n != old])
    node.slice = ast.Constant(value=new)
    return f"swap_feature: {old} -> {new}"


def _op_wrap_unary(ctx: _Context, slots: list[_Slot], root: _Slot) -> str | None:
    candidates = [s for s in slots if s.is_number and _depends_on_input(s.get())]
    if not candidates:
        return None
    slot = root if ctx.rng.random() < 0.3 else ctx.rng.choice(candidates)
    node = slot.get()
    function = ctx.rng.choice(("log1p", "sqrt"))
    if _is_feature(node):
        inner = node  # features are non-negative
    elif ctx.rng.random() < 0.5:
        inner = _np_call("abs", node)
    else:
        inner = _np_call("maximum", node, _number(0.0))
    wrapped = _np_call(function, inner)
    # A factor of a product already has a coefficient next to it; elsewhere the new shape needs one.
    holder = slot.holder
    if not (isinstance(holder, ast.BinOp) and isinstance(holder.op, (ast.Mult, ast.Div))):
        wrapped = _binary(_number(1.0), ast.Mult(), wrapped)
    slot.set(wrapped)
    return f"wrap_unary: np.{function} around {ast.unparse(node)}"


def _perturb_coefficients(ctx: _Context, slots: list[_Slot]) -> bool:
    literals = [s for s in slots if s.is_number and _is_literal(s.get())]
    if not literals:
        return False
    slot = ctx.rng.choice(literals)
    value = float(ast.literal_eval(slot.get()))
    slot.set(_number(value * math.exp(ctx.rng.gauss(0.0, 0.7)) if value else DEFAULT_COEFFICIENT))
    return True


# Sub-mutations applied to the copied branch of a regime split.
_BRANCH_MUTATIONS = ("add_term", "remove_term", "swap_feature", "perturb")


def _op_regime_split(ctx: _Context, slots: list[_Slot], root: _Slot) -> str | None:
    target = _pick_target(ctx, slots, root)
    if target is None:
        return None
    original = target.get()
    branch_slots, branch_root, holder = _region_slots(copy.deepcopy(original))
    how = ctx.rng.choice(_BRANCH_MUTATIONS)
    changed = {
        "add_term": lambda: _op_add_term(ctx, branch_slots, branch_root) is not None,
        "remove_term": lambda: _op_remove_term(ctx, branch_slots, branch_root) is not None,
        "swap_feature": lambda: _op_swap_feature(ctx, branch_slots, branch_root) is not None,
        "perturb": lambda: _perturb_coefficients(ctx, branch_slots),
    }[how]()
    # An unchanged copy is still a split: each branch gets its own refitted constants.
    other = holder.body
    name = ctx.choose_feature()
    threshold = ctx.threshold(name)
    condition = ast.Compare(left=_feature(name), ops=[ast.Gt()], comparators=[_number(threshold)])
    branches = (original, other) if ctx.rng.random() < 0.5 else (other, original)
    target.set(_np_call("where", condition, *branches))
    return f"regime_split: on {ast.unparse(condition)} ({how if changed else 'copy'} in one branch)"


def _op_scale_by_factor(ctx: _Context, slots: list[_Slot], root: _Slot) -> str | None:
    target = _pick_target(ctx, slots, root)
    if target is None:
        return None
    name = ctx.choose_feature()
    factor = _binary(_number(1.0), ast.Add(),
                     _binary(_number(ctx.factor_coefficient(name)), ast.Mult(), _feature(name)))
    target.set(_binary(target.get(), ast.Mult(), factor))
    return f"scale_by_factor: * ({ast.unparse(factor)})"


_OPERATOR_SWAPS: dict[type, Callable[[], ast.operator]] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
}
_SYMBOLS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def _op_replace_operator(ctx: _Context, slots: list[_Slot], root: _Slot) -> str | None:
    candidates = [s.get() for s in slots if isinstance(s.get(), ast.BinOp) and type(s.get().op) in _OPERATOR_SWAPS]
    if not candidates:
        return None
    node = ctx.rng.choice(candidates)
    old = type(node.op)
    node.op = _OPERATOR_SWAPS[old]()
    return f"replace_operator: {_SYMBOLS[old]} -> {_SYMBOLS[type(node.op)]}"


def _has_coefficient(node: ast.expr) -> bool:
    return (isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div))
            and (_is_literal(node.left) or _is_literal(node.right)))


def _op_crossover(ctx: _Context, slots: list[_Slot], root: _Slot) -> str | None:
    # Donors are prepared lazily (checking and inlining one costs more than a whole mutation):
    # only the drawn one, and the others in a random order only if it is unusable.
    order = list(ctx.donor_texts)
    ctx.rng.shuffle(order)
    pieces = next((m for m in map(ctx.donor_material, order) if m), None)
    if pieces is None:
        return None
    material = ctx.rng.choice(pieces)
    graft = ast.parse(material, mode="eval").body
    if ctx.rng.random() < 0.5:
        target = _pick_target(ctx, slots, root)
        if target is None:
            return None
        if _has_coefficient(graft):
            term = graft
        else:
            # The donor's own scale for a compound piece; a bare feature gets a new term's coefficient.
            coefficient = ctx.term_coefficient([graft.slice.value]) if _is_feature(graft) else 1.0
            term = _binary(_number(coefficient), ast.Mult(), graft)
        target.set(_binary(target.get(), ast.Add(), term))
        return f"crossover: + {ast.unparse(term)}"
    numbers = [s for s in slots if s.is_number]
    if not numbers:
        return None
    slot = ctx.rng.choice(numbers)
    replaced = ast.unparse(slot.get())
    slot.set(graft)
    return f"crossover: {replaced} -> {material}"


def _op_perturb_constants(ctx: _Context, slots: list[_Slot], root: _Slot) -> str | None:
    # (slot-like setter, value, role); exponents sit outside the slots (they must stay literals).
    found: list[tuple[Callable[[ast.expr], None], float, str]] = []
    for slot in slots:
        node = slot.get()
        if _is_literal(node):
            role = "threshold" if slot.in_comparison else "coefficient"
            found.append((slot.set, float(ast.literal_eval(node)), role))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and _is_literal(node.right):
            found.append((lambda new, node=node: setattr(node, "right", new),
                          float(ast.literal_eval(node.right)), "exponent"))
    if not found:
        return None
    # The fit moves coefficients itself; thresholds and exponents only move here.
    weights = [{"threshold": 3.0, "exponent": 2.0, "coefficient": 1.0}[role] for _, _, role in found]
    count = 2 if len(found) > 1 and ctx.rng.random() < 0.3 else 1
    changes = []
    for setter, value, role in ctx.rng.choices(found, weights=weights, k=count):
        if role == "exponent":
            sign = -1.0 if value < 0 else 1.0
            new = sign * ctx.rng.choice([e for e in EXPONENTS if e != abs(value)])
        elif role == "threshold":
            new = value * 2.0 ** ctx.rng.gauss(0.0, 1.0) if value else 1.0
        else:
            new = value * math.exp(ctx.rng.gauss(0.0, 0.7)) if value else DEFAULT_COEFFICIENT
            if ctx.rng.random() < 0.1:
                new = -new
        setter(_number(new))
        changes.append(f"{role} {value:.4g} -> {new:.4g}")
    return "perturb_constants: " + ", ".join(changes)


def _has_literal(node: ast.AST) -> bool:
    return any(_is_literal(n) for n in ast.walk(node))


def _op_unwrap(ctx: _Context, slots: list[_Slot], root: _Slot) -> str | None:
    candidates = []
    for slot in slots:
        node = slot.get()
        if slot.is_condition:
            continue
        # `c * x -> x` would only drop a fittable coefficient (and `c * x -> c` is remove_term's
        # job), so only products and quotients of two input-dependent factors are unwrapped.
        if isinstance(node, ast.Call) or (isinstance(node, ast.UnaryOp) and not _is_literal(node)) \
                or (isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div))
                    and _depends_on_input(node.left) and _depends_on_input(node.right)):
            candidates.append(slot)
    if not candidates:
        return None
    slot = ctx.rng.choice(candidates)
    node = slot.get()
    if isinstance(node, ast.Call):
        numeric = node.args[1:] if node.func.attr == "where" else node.args
        kept = ctx.rng.choice(numeric)
    elif isinstance(node, ast.UnaryOp):
        kept = node.operand
    elif _has_literal(node.left) != _has_literal(node.right):
        kept = node.left if _has_literal(node.left) else node.right  # keep the side with the coefficient
    else:
        kept = node.left if ctx.rng.random() < 0.5 else node.right
    slot.set(kept)
    return f"unwrap: {ast.unparse(node)} -> {ast.unparse(kept)}"


_OPERATOR_FUNCTIONS: dict[str, Callable[[_Context, list[_Slot], _Slot], str | None]] = {
    "add_term": _op_add_term,
    "remove_term": _op_remove_term,
    "swap_feature": _op_swap_feature,
    "wrap_unary": _op_wrap_unary,
    "regime_split": _op_regime_split,
    "scale_by_factor": _op_scale_by_factor,
    "replace_operator": _op_replace_operator,
    "crossover": _op_crossover,
    "perturb_constants": _op_perturb_constants,
    "unwrap": _op_unwrap,
}
assert tuple(_OPERATOR_FUNCTIONS) == OPERATORS


# ---------------------------------------------------------------------------------------------
# Rendering: put a new function back into the parent's text
# ---------------------------------------------------------------------------------------------


def _marker_lines(lines: Sequence[str]) -> tuple[int | None, int | None]:
    start = next((i for i, line in enumerate(lines) if START_MARKER in line), None)
    end = next((i for i, line in enumerate(lines) if END_MARKER in line), None)
    return start, end


def render_function(parent_text: str, parent_function: ast.FunctionDef, function: ast.FunctionDef) -> str:
    """The parent's text with its predict function replaced by `function` (ast.unparse'd).

    Everything outside the function's lines (docstring, comments, import, markers around the
    function) is kept verbatim, so OpenEvolve's EVOLVE-BLOCK enforcement sees no outside edit.
    When the parent's markers sit inside the function (around the body), they are written
    around the new body at the same place (after the def line and any function docstring).
    """
    lines = parent_text.split("\n")
    first, last = parent_function.lineno - 1, parent_function.end_lineno  # [first, last) lines
    start, end = _marker_lines(lines)
    if start is not None and end is not None and first < start < end:
        statements = _body_statements(function)
        docstring = function.body[:len(function.body) - len(statements)]
        indent = " " * 4
        header = ast.unparse(_function_def(function.args, docstring or [ast.Pass()])).split("\n")
        if not docstring:
            header = header[:1]
        body = [indent + line for statement in statements for line in ast.unparse(statement).split("\n")]
        new = header + [indent + START_MARKER] + body + [indent + END_MARKER]
        last = max(last, end + 1)
    else:
        new = ast.unparse(function).split("\n")
    return "\n".join(lines[:first] + new + lines[last:])


def _fresh_module(parent_text: str | None, function_text: str) -> str:
    """A new program when the parent cannot be used: the import, markers if the parent had them."""
    had_markers = bool(parent_text) and START_MARKER in parent_text and END_MARKER in parent_text
    if had_markers:
        return f"import numpy as np\n\n\n{START_MARKER}\n{function_text}\n{END_MARKER}\n"
    return f"import numpy as np\n\n\n{function_text}\n"


# ---------------------------------------------------------------------------------------------
# The mutator
# ---------------------------------------------------------------------------------------------


def _probe_batch(features: Sequence[str], scales: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Fixed positive feature values for the finiteness check: around each feature's typical value
    when known, else log-uniform over 0.5..5000. Seeded by position, so the same for every call."""
    rng = np.random.default_rng(20_240_601)
    batch = {}
    for name in features:
        spread = rng.uniform(-2.0, 2.0, PROBE_ROWS)
        scale = scales.get(name)
        batch[name] = scale * 2.0 ** spread if scale else 0.5 * 10.0 ** rng.uniform(0.0, 4.0, PROBE_ROWS)
    return batch


def _nonfinite_count(program: CheckedProgram, batch: Mapping[str, np.ndarray]) -> int:
    """Non-finite predictions on the probe batch (every row when the program fails to run)."""
    try:
        with np.errstate(all="ignore"):
            output = np.broadcast_to(np.asarray(program.compile()(batch), dtype=np.float64), (PROBE_ROWS,))
    except Exception:  # noqa: BLE001 - a candidate that cannot run counts as wholly non-finite
        return PROBE_ROWS
    return int(np.count_nonzero(~np.isfinite(output)))


@dataclass
class _Parent:
    """The parent as the mutator uses it: its text, checked form (with the operation count), its
    function re-rendered (to recognise a no-op mutation) and its non-finite count on the probe."""

    text: str
    checked: CheckedProgram
    function_source: str
    nonfinite: int


class OfflineMutator(LLMInterface):
    """A language-model stand-in that answers every request with one symbolic mutation of the parent.

    `mutate(system_message, user_message, seed)` is the whole behaviour; the two async methods
    only adapt OpenEvolve's calling conventions to it. After a call, `last_operator` names the
    operator that produced the answer (one of OPERATORS, or FALLBACK_PERTURB / FALLBACK_LINEAR),
    `last_description` says what it changed, and `last_usage` reports zero tokens.
    """

    def __init__(self, model: str = MODEL_NAME, *, random_seed: int | None = None, max_attempts: int = 16,
                 limits: Limits = Limits()):
        self.model = model
        self.max_attempts = max_attempts
        self.limits = limits
        # Only used when a call carries no seed.
        self._unseeded = random.Random(random_seed)
        self.last_operator: str | None = None
        self.last_description: str | None = None
        self.last_usage: dict[str, int] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        self._probe_cache: dict[tuple, dict[str, np.ndarray]] = {}
        self._parent_cache: dict[tuple, _Parent | None] = {}
        self._material_cache: dict[tuple[str, tuple[str, ...]], list[str]] = {}

    # ---- OpenEvolve's interface ------------------------------------------------------------------

    async def generate(self, prompt: str, **kwargs: Any) -> str:
        return self.mutate("", prompt, kwargs.get("seed"))

    async def generate_with_context(self, system_message: str, messages: list[dict[str, str]], **kwargs: Any) -> str:
        users = [m.get("content", "") for m in messages if m.get("role") == "user"]
        prompt = users[-1] if users else (messages[-1].get("content", "") if messages else "")
        return self.mutate(system_message or "", prompt, kwargs.get("seed"))

    # ---- the mutation --------------------------------------------------------------------------

    def mutate(self, system_message: str, user_message: str, seed: int | None = None) -> str:
        """The answer: a one-line description and one valid program in a ```python block."""
        if seed is None:
            seed = self._unseeded.getrandbits(63)
        digest = hashlib.sha256(f"{system_message}\x00{user_message}".encode("utf-8")).hexdigest()
        rng = random.Random(f"{seed}:{digest}")
        request = read_request(system_message, user_message)
        text, operator, description = self._propose(request, rng)
        self.last_operator, self.last_description = operator, description
        self.last_usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return f"Mutation: {description}\n\n```python\n{text}\n```\n"

    def _check(self, text: str, features: Sequence[str]) -> CheckedProgram | None:
        try:
            return check_program(text, features, self.limits)
        except ProgramRefused:
            return None

    def _probe(self, features: tuple[str, ...], scales: Mapping[str, float]) -> dict[str, np.ndarray]:
        key = (features, tuple(sorted(scales.items())))
        if key not in self._probe_cache:
            self._probe_cache[key] = _probe_batch(features, scales)
        return self._probe_cache[key]

    def _propose(self, request: MutationRequest, rng: random.Random) -> tuple[str, str, str]:
        features = request.feature_names
        probe = self._probe(features, request.feature_scales)
        parent = self._parent(request, probe) if request.parent_text else None
        if parent is None:
            return self._linear(request, rng, None)
        parent_checked = parent.checked
        ctx = _Context(rng=rng, features=features, feature_scales=request.feature_scales,
                       target_scale=request.target_scale or self._typical_output(parent_checked, request),
                       donor_texts=request.donor_texts,
                       donor_material=lambda text: self._donor_material(text, features),
                       thresholds=_thresholds(parent_checked))
        budget = request.op_budget
        ceiling = None if budget is None else max(budget, parent_checked.num_operations)
        weights = dict(BASE_WEIGHTS)
        if not ctx.donor_texts:
            weights["crossover"] = 0.0
        if len(features) < 2:
            weights["swap_feature"] = 0.0
        if budget is not None and parent_checked.num_operations >= budget:
            for name in GROWING_OPERATORS:
                weights[name] = 0.0
            for name in SHRINKING_OPERATORS:
                weights[name] *= SHRINK_BOOST
        for _ in range(self.max_attempts):
            names = [n for n in OPERATORS if weights[n] > 0]
            if not names:
                break
            operator = rng.choices(names, weights=[weights[n] for n in names], k=1)[0]
            tree = ast.parse(parent.text)
            function = _find_function(tree)
            slots, root = _function_slots(function)
            description = _OPERATOR_FUNCTIONS[operator](ctx, slots, root)
            if description is None:
                weights[operator] = 0.0  # structurally inapplicable to this parent: never draw it again
                continue
            candidate = self._accept(parent, tree, function, features, probe, ceiling)
            if candidate is not None:
                return candidate, operator, description
        return self._fallback(parent, request, rng)

    def _parent(self, request: MutationRequest, probe: Mapping[str, np.ndarray]) -> _Parent | None:
        """The checked parent, or None when it is not a valid program; cached (OpenEvolve often
        samples the same parent several times in a row)."""
        key = (request.parent_text, request.feature_names, tuple(sorted(request.feature_scales.items())))
        if key in self._parent_cache:
            return self._parent_cache[key]
        checked = self._check(request.parent_text, request.feature_names)
        parent = None
        if checked is not None:
            parent = _Parent(request.parent_text, checked, ast.unparse(checked.function),
                             _nonfinite_count(checked, probe))
        if len(self._parent_cache) >= _PARENT_CACHE_SIZE:
            self._parent_cache.pop(next(iter(self._parent_cache)))  # oldest first (dict order)
        self._parent_cache[key] = parent
        return parent

    def _accept(self, parent: _Parent, tree: ast.Module, function: ast.FunctionDef, features: Sequence[str],
                probe: Mapping[str, np.ndarray], ceiling: int | None) -> str | None:
        """The rendered candidate if it is valid, new, within budget and no less finite; else None."""
        _drop_dead_assignments(function)
        if not _body_statements(function) or ast.unparse(function) == parent.function_source:
            return None
        text = render_function(parent.text, parent.checked.function, function)
        checked = self._check(text, features)
        if checked is None or (ceiling is not None and checked.num_operations > ceiling):
            return None
        if _nonfinite_count(checked, probe) > parent.nonfinite:
            return None
        return text

    def _donor_material(self, text: str, features: tuple[str, ...]) -> list[str]:
        """Crossover material of one donor; cached, as the same top programs recur across iterations."""
        key = (text, features)
        material = self._material_cache.get(key)
        if material is None:
            material = donor_material(text) if self._check(text, features) is not None else []
            if len(self._material_cache) >= _MATERIAL_CACHE_SIZE:
                self._material_cache.pop(next(iter(self._material_cache)))  # oldest first (dict order)
            self._material_cache[key] = material
        return material

    @staticmethod
    def _typical_output(parent: CheckedProgram, request: MutationRequest) -> float | None:
        """|parent| at the typical feature values, when every feature it reads has a scale."""
        scales = request.feature_scales
        if not scales or not all(n in scales for n in parent.features_used):
            return None
        point = {n: np.array([scales.get(n, 1.0)]) for n in request.feature_names}
        try:
            with np.errstate(all="ignore"):
                value = float(np.abs(np.asarray(parent.compile()(point), dtype=np.float64)).ravel()[0])
        except Exception:  # noqa: BLE001 - no estimate is fine
            return None
        return value if math.isfinite(value) and value > 0 else None

    def _fallback(self, parent: _Parent, request: MutationRequest, rng: random.Random) -> tuple[str, str, str]:
        """The parent with one coefficient or threshold scaled by 1.5 (or set, when zero)."""
        tree = ast.parse(parent.text)
        function = _find_function(tree)
        slots, _ = _function_slots(function)
        literals = [s for s in slots if _is_literal(s.get())]
        if literals:
            slot = rng.choice(literals)
            value = float(ast.literal_eval(slot.get()))
            slot.set(_number(value * 1.5 if value else DEFAULT_COEFFICIENT))
            text = render_function(parent.text, parent.checked.function, function)
            if self._check(text, request.feature_names) is not None and ast.unparse(function) != parent.function_source:
                return text, FALLBACK_PERTURB, f"fallback: constant {value:.4g} perturbed"
        return self._linear(request, rng, parent)

    def _linear(self, request: MutationRequest, rng: random.Random, parent: _Parent | None) -> tuple[str, str, str]:
        """A fresh linear model of up to three features (a constant when no feature is known)."""
        features = list(request.feature_names)
        chosen = rng.sample(features, min(3, len(features)))
        expression: ast.expr = _number(1.0)
        for name in chosen:
            scale = request.feature_scales.get(name)
            known = request.target_scale and scale
            coefficient = 0.1 * request.target_scale / scale if known else DEFAULT_COEFFICIENT
            expression = _binary(expression, ast.Add(), _binary(_number(coefficient), ast.Mult(), _feature(name)))
        arguments = ast.arguments(posonlyargs=[], args=[ast.arg(arg="f")], kwonlyargs=[], kw_defaults=[], defaults=[])
        function = _function_def(arguments, [ast.Return(value=expression)])
        if parent is not None:
            text = render_function(parent.text, parent.checked.function, function)
        else:
            text = _fresh_module(request.parent_text, ast.unparse(function))
        return text, FALLBACK_LINEAR, f"fallback: linear model of {', '.join(chosen) or 'no features'}"


def _thresholds(program: CheckedProgram) -> dict[str, list[float]]:
    """Thresholds the program compares each feature with (`f[x] > t` or `t < f[x]`)."""
    found: dict[str, list[float]] = {}
    for node in ast.walk(program.function):
        if isinstance(node, ast.Compare) and len(node.comparators) == 1:
            left, right = node.left, node.comparators[0]
            for side, other in ((left, right), (right, left)):
                if _is_feature(side) and _is_literal(other):
                    value = float(ast.literal_eval(other))
                    if value > 0:
                        found.setdefault(side.slice.value, []).append(value)
    return found


def make_offline_mutator(model_cfg: Any) -> OfflineMutator:
    """OpenEvolve's `init_client`: a module-level function, so it pickles for spawned workers."""
    name = getattr(model_cfg, "name", None) or MODEL_NAME
    return OfflineMutator(name, random_seed=getattr(model_cfg, "random_seed", None))
