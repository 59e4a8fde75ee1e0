"""The evolved-program language: check a candidate, count its operations, run it, rewrite its constants.

A candidate is untrusted Python module text written by a language model. It is parsed with `ast`
and checked against a whitelist BEFORE anything executes; only a program that passes becomes a
`CheckedProgram`, and only its checked AST is ever compiled (with no builtins and a numpy stand-in
exposing only the allowed functions, so even a checker bug cannot reach `os`).

The language
------------
    \"\"\"Optional docstring; comments anywhere.\"\"\"
    import numpy as np              # optional; the only import allowed

    def predict(f):
        \"\"\"Optional docstring.\"\"\"
        compute = f["prefill_tokens"] * f["hidden_dim"] / f["peak_flops_bf16"]
        is_big = f["scheduled_tokens"] > 512
        return np.where(is_big, 1e6 * compute, 80.0) + 2.5 * f["decode_tokens"] ** 0.5

- Module: optional docstring, `import numpy as np` (optional: `np` is provided either way), exactly
  one `def predict(f):` (no decorators, defaults, annotations or other parameters).
- Body: optional docstring, then single-target assignments `name = expression`, then one final
  `return expression`. A name may be reassigned (`x = x * 2`); every assigned value must be read
  later (Go rejects unused variables, and dead code would hide constants from the fit).
  Augmented assignment (`x += 1`) is refused: write `x = x + 1`, one statement form keeps the
  Go emitter small.
- Expressions: numeric literals (int/float; not bool/complex; finite), `f["feature"]` (the only
  string constant, and the feature must be available), local names assigned earlier,
  `+ - * /`, `**` with a literal exponent (|exponent| <= 4) on a base that depends on a
  feature, unary `-` and `+`, `np.log np.log1p np.sqrt np.exp np.abs` (one argument),
  `np.minimum np.maximum` (two), `np.where(condition, a, b)`.
- Conditions: one comparison `a < b` (`<=`, `>`, `>=`; not chained) of numeric expressions. A
  condition is only usable as the first argument of `np.where`, directly or through a local
  holding it; it is not a number (no `(x > 1) * 3`).
- Size: at most `Limits.max_chars` characters, `max_nodes` AST nodes, `max_depth` AST nesting
  levels and `max_operations` operations.

Operation count (the one rule, used everywhere)
-----------------------------------------------
Each of these counts 1: a binary arithmetic operator (+ - * / **), a unary minus applied to an
expression, a comparison, a call of a unary function (log, log1p, sqrt, exp, abs), a call of
np.minimum / np.maximum, a call of np.where. These count 0: a feature read `f["x"]`, a numeric
literal (a minus sign written directly on a literal, `-2.5`, is part of the literal), a local
name, unary plus. The count of a program is the sum over its statements (every assignment and
the return): an expression assigned to a local counts once however often the local is read,
while a sub-expression written out twice counts twice.

Constants
---------
Every numeric literal is a `Constant` with its exact text span. Roles: `exponent` (of `**`,
fixed), `threshold` (anywhere inside a comparison: the fit cannot move them, MAPE is piecewise
constant in a threshold) and `coefficient` (everything else: the fittable ones).
"""

from __future__ import annotations

import ast
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from stepformula.errors import InputError

# np functions a program may call, with their number of arguments.
NP_FUNCTIONS: dict[str, int] = {
    "log": 1, "log1p": 1, "sqrt": 1, "exp": 1, "abs": 1,
    "minimum": 2, "maximum": 2,
    "where": 3,
}
FEATURES_PARAM = "f"
NUMPY_NAME = "np"
FUNCTION_NAME = "predict"
# Names used by the compiled form; user names starting with "_" are refused, so they cannot clash.
_CONSTANTS_PARAM = "_k"

_NUM = "number"
_BOOL = "condition"

_COMPARISONS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_BINARY_OPERATORS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}


@dataclass(frozen=True)
class Limits:
    """Size bounds of an acceptable program: a program beyond any of them is refused unexecuted."""

    max_chars: int = 20_000
    max_nodes: int = 1_500
    max_depth: int = 64
    max_operations: int = 60
    max_abs_exponent: float = 4.0


class ProgramRefused(InputError):
    """A candidate program outside the language; `reason` names the construct and its line."""

    def __init__(self, reason: str, line: int | None = None):
        self.reason = reason if line is None else f"line {line}: {reason}"
        self.line = line
        super().__init__("program", self.reason)


@dataclass(frozen=True)
class Constant:
    """One numeric literal of a program: its value, role and exact place in the text.

    Lines are 1-based, columns 0-based character offsets (not bytes); `end_col` is exclusive.
    A literal with a minus sign written on it (`-2.5`) is one constant with a negative value,
    and its span includes the sign.
    """

    index: int
    value: float
    role: str  # "coefficient" (fittable), "exponent" or "threshold"
    line: int
    col: int
    end_line: int
    end_col: int
    # The literal is the operand of a unary minus (`-(-2.0)`): a positive value must be written
    # `(+v)` there, or `-v` would read back as one literal and lose an operation.
    under_minus: bool = False

    @property
    def fittable(self) -> bool:
        return self.role == "coefficient"

    @property
    def span(self) -> tuple[int, int, int, int]:
        return (self.line, self.col, self.end_line, self.end_col)


class _SafeNumpy:
    """The only `np` a program sees: the allowed functions, nothing else (no module, no __dict__)."""

    __slots__ = tuple(NP_FUNCTIONS)

    def __init__(self) -> None:
        for name in NP_FUNCTIONS:
            object.__setattr__(self, name, getattr(np, name))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("read-only")


_SAFE_NUMPY = _SafeNumpy()


class CheckedProgram:
    """A program that passed the checker: its AST, constants, operation count and features.

    Build one with `check_program`. `compile()` gives the vectorised callable;
    `compile_parametric()` the same with the fittable constants as an argument (for the fit);
    `with_constants()` writes new fittable values back into the original text.
    """

    def __init__(self, text: str, tree: ast.Module, function: ast.FunctionDef,
                 constants: tuple[Constant, ...], num_operations: int,
                 features_used: tuple[str, ...], literal_nodes: dict[tuple, int]):
        self.text = text
        self.tree = tree
        self.function = function
        self.constants = constants
        self.num_operations = num_operations
        self.features_used = features_used
        # _node_key(literal node) -> constant index; keyed by kind and position rather than
        # identity, so a copy or re-parse of the same text maps to the same constants.
        self._literal_nodes = literal_nodes
        self._parametric: Callable[[Mapping[str, np.ndarray], np.ndarray], np.ndarray] | None = None

    @property
    def fittable(self) -> tuple[Constant, ...]:
        """The constants the fit may change, in text order."""
        return tuple(c for c in self.constants if c.fittable)

    @property
    def fittable_values(self) -> np.ndarray:
        return np.array([c.value for c in self.fittable], dtype=np.float64)

    def constant_for(self, node: ast.AST) -> Constant | None:
        """The constant a node of `tree` stands for (a literal or a minus on a literal), else None."""
        index = self._literal_nodes.get(_node_key(node))
        return None if index is None else self.constants[index]

    def compile_parametric(self) -> Callable[[Mapping[str, np.ndarray], np.ndarray], np.ndarray]:
        """`run(f, values)`: the program with `values` in place of its fittable constants."""
        if self._parametric is None:
            self._parametric = _compile(self)
        return self._parametric

    def compile(self) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
        """`predict(f)` with the program's own constants."""
        run = self.compile_parametric()
        values = self.fittable_values

        def predict(f: Mapping[str, np.ndarray]) -> np.ndarray:
            return run(f, values)

        return predict

    def with_constants(self, values: Sequence[float]) -> str:
        """The program text with the fittable constants replaced by `values` (text order).

        Only the literal spans change (comments and layout are kept; line ends are \\n, as
        check_program normalises them). Values are written with repr(float), which round-trips
        exactly; a negative value is parenthesised, and a positive one under a unary minus is
        written (+v), so the operation count never changes.
        """
        fittable = self.fittable
        values = [float(v) for v in values]
        if len(values) != len(fittable):
            raise ValueError(f"expected {len(fittable)} constant values, got {len(values)}")
        bad = [v for v in values if not math.isfinite(v)]
        if bad:
            raise ValueError(f"constant values must be finite, got {bad}")
        lines = _split_lines(self.text)
        # Replace from the last span backwards so earlier offsets stay valid.
        for constant, value in sorted(zip(fittable, values), key=lambda cv: cv[0].span, reverse=True):
            if value < 0 or _is_negative_zero(value):
                literal = f"({value!r})"
            else:
                literal = f"(+{value!r})" if constant.under_minus else repr(value)
            first, last = constant.line - 1, constant.end_line - 1
            before = lines[first][:constant.col]
            after = lines[last][constant.end_col:]
            # `return-2.0` is valid text; `return113.9` is not: keep the literal a separate token.
            if before[-1:].isalnum() or before[-1:] == "_":
                literal = " " + literal
            if after[:1].isalnum() or after[:1] == "_":
                literal = literal + " "
            lines[first:last + 1] = [before + literal + after]
        return "".join(lines)


def _split_lines(text: str) -> list[str]:
    """Lines as the parser numbers them (only \\n ends a line; str.splitlines knows more)."""
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + [parts[-1]]


def _node_key(node: ast.AST) -> tuple:
    """Identifies a literal node by kind and exact span (two literals never share a span)."""
    return (type(node).__name__, getattr(node, "lineno", None), getattr(node, "col_offset", None),
            getattr(node, "end_lineno", None), getattr(node, "end_col_offset", None))


def _is_negative_zero(value: float) -> bool:
    return value == 0.0 and math.copysign(1.0, value) < 0


def check_program(text: str, feature_names: Sequence[str], limits: Limits = Limits()) -> CheckedProgram:
    """Check a candidate against the language; raise ProgramRefused naming the first violation."""
    if not isinstance(text, str):
        raise ProgramRefused(f"program text must be a str, got {type(text).__name__}")
    # The parser reads \r\n and \r as \n; normalising keeps text columns equal to parser columns.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if len(text) > limits.max_chars:
        raise ProgramRefused(f"program has {len(text)} characters, more than the limit {limits.max_chars}")
    try:
        with warnings.catch_warnings():  # e.g. invalid escapes: the refusal, if any, says enough
            warnings.simplefilter("ignore")
            tree = ast.parse(text, filename="<program>", mode="exec")
    except SyntaxError as e:
        raise ProgramRefused(f"syntax error: {e.msg}", e.lineno) from None
    except (RecursionError, MemoryError):
        raise ProgramRefused("program is nested too deeply for the parser") from None
    except ValueError as e:  # e.g. null bytes
        raise ProgramRefused(f"program text cannot be parsed: {e}") from None
    _check_size(tree, limits)
    return _Checker(text, tree, frozenset(feature_names), limits).check()


def _check_size(tree: ast.AST, limits: Limits) -> None:
    """Node count and nesting depth, walked iteratively so a deep tree cannot exhaust the stack."""
    stack: list[tuple[ast.AST, int]] = [(tree, 1)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > limits.max_nodes:
            raise ProgramRefused(f"program has more than {limits.max_nodes} syntax nodes")
        if depth > limits.max_depth:
            raise ProgramRefused(
                f"expression nesting deeper than {limits.max_depth} levels", getattr(node, "lineno", None))
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _describe(node: ast.AST) -> str:
    """A short human name for a construct, for refusal reasons."""
    names = {
        ast.Import: "import", ast.ImportFrom: "from-import", ast.ClassDef: "class definition",
        ast.AsyncFunctionDef: "async function", ast.For: "for loop", ast.AsyncFor: "async for loop",
        ast.While: "while loop", ast.If: "if statement", ast.With: "with statement",
        ast.AsyncWith: "async with statement", ast.Try: "try statement", ast.Raise: "raise",
        ast.Assert: "assert", ast.Delete: "del", ast.Global: "global", ast.Nonlocal: "nonlocal",
        ast.Pass: "pass", ast.Break: "break", ast.Continue: "continue",
        ast.AugAssign: "augmented assignment (write x = x + ...)",
        ast.AnnAssign: "annotated assignment", ast.Lambda: "lambda", ast.IfExp: "conditional expression (use np.where)",
        ast.ListComp: "list comprehension", ast.SetComp: "set comprehension",
        ast.DictComp: "dict comprehension", ast.GeneratorExp: "generator expression",
        ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield from",
        ast.JoinedStr: "f-string", ast.FormattedValue: "f-string", ast.NamedExpr: "walrus (:=)",
        ast.Starred: "starred expression", ast.List: "list", ast.Tuple: "tuple", ast.Set: "set",
        ast.Dict: "dict", ast.Slice: "slice", ast.BoolOp: "and/or (use np.where)",
        ast.Attribute: "attribute access", ast.Subscript: "subscript", ast.Call: "call",
        ast.Expr: "expression statement", ast.FunctionDef: "function definition",
        ast.Return: "return", ast.Assign: "assignment",
    }
    if hasattr(ast, "TryStar") and isinstance(node, ast.TryStar):
        return "try statement"
    if hasattr(ast, "Match") and isinstance(node, ast.Match):
        return "match statement"
    return names.get(type(node), type(node).__name__)


def _line(node: ast.AST) -> int | None:
    return getattr(node, "lineno", None)


def _is_docstring(statement: ast.stmt) -> bool:
    return (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str))


def _numeric_literal(node: ast.AST) -> float | None:
    """The value of a numeric literal, possibly with a minus sign written on it; else None."""
    sign = 1.0
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        sign, node = -1.0, node.operand
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        try:
            value = float(node.value)
        except OverflowError:
            raise ProgramRefused("numeric literal is too large for a float64", _line(node)) from None
        if not math.isfinite(value):
            raise ProgramRefused(f"numeric literal {value} is not finite", _line(node))
        return sign * value
    return None


@dataclass
class _Local:
    """One assignment of a local name: what it holds and whether it has been read."""

    kind: str
    line: int
    depends_on_feature: bool
    read: bool = False


class _Checker:
    """Walks a parsed module once: checks every construct, types it, counts operations, finds constants."""

    def __init__(self, text: str, tree: ast.Module, feature_names: frozenset[str], limits: Limits):
        self.text = text
        self.lines = _split_lines(text)
        self.tree = tree
        self.feature_names = feature_names
        self.limits = limits
        self.locals: dict[str, _Local] = {}
        self.constants: list[Constant] = []
        self.literal_nodes: dict[tuple, int] = {}
        self.features_used: list[str] = []

    # ---- module and function -------------------------------------------------------------------

    def check(self) -> CheckedProgram:
        function = self._check_module(self.tree)
        operations = self._check_function(function)
        if operations > self.limits.max_operations:
            raise ProgramRefused(
                f"program has {operations} operations, more than the hard limit {self.limits.max_operations}")
        return CheckedProgram(self.text, self.tree, function, tuple(self.constants), operations,
                              tuple(self.features_used), self.literal_nodes)

    def _check_module(self, module: ast.Module) -> ast.FunctionDef:
        functions: list[ast.FunctionDef] = []
        for position, statement in enumerate(module.body):
            if position == 0 and _is_docstring(statement):
                continue
            if isinstance(statement, ast.Import):
                self._check_import(statement)
            elif isinstance(statement, ast.FunctionDef):
                if functions:
                    raise ProgramRefused("only one function, predict(f), may be defined", statement.lineno)
                functions.append(statement)
            else:
                raise ProgramRefused(
                    f"{_describe(statement)} is not allowed at module level "
                    f"(only a docstring, 'import numpy as np' and 'def predict(f):')", _line(statement))
        if not functions:
            raise ProgramRefused("no 'def predict(f):' found")
        return functions[0]

    def _check_import(self, statement: ast.Import) -> None:
        if [(a.name, a.asname) for a in statement.names] != [("numpy", NUMPY_NAME)]:
            written = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in statement.names)
            raise ProgramRefused(
                f"import of '{written}' is not allowed (the only import is 'import numpy as np')",
                statement.lineno)

    def _check_function(self, function: ast.FunctionDef) -> int:
        line = function.lineno
        if function.name != FUNCTION_NAME:
            raise ProgramRefused(f"the function must be named '{FUNCTION_NAME}', not '{function.name}'", line)
        if function.decorator_list:
            raise ProgramRefused("decorators are not allowed", line)
        if function.returns is not None:
            raise ProgramRefused("a return annotation is not allowed", line)
        if getattr(function, "type_params", None):
            raise ProgramRefused("type parameters are not allowed", line)
        arguments = function.args
        if (arguments.posonlyargs or arguments.vararg or arguments.kwonlyargs or arguments.kwarg
                or arguments.defaults or arguments.kw_defaults
                or [a.arg for a in arguments.args] != [FEATURES_PARAM]):
            raise ProgramRefused(
                f"the signature must be exactly 'def {FUNCTION_NAME}({FEATURES_PARAM}):' "
                "(one parameter, no defaults, *args or **kwargs)", line)
        if arguments.args[0].annotation is not None:
            raise ProgramRefused("parameter annotations are not allowed", line)

        body = list(function.body)
        if body and _is_docstring(body[0]):
            body = body[1:]
        if not body or not isinstance(body[-1], ast.Return):
            raise ProgramRefused("the body of predict must end with 'return <expression>'", line)
        operations = 0
        for statement in body[:-1]:
            if isinstance(statement, ast.Return):
                raise ProgramRefused("only one return, as the last statement, is allowed", statement.lineno)
            if not isinstance(statement, ast.Assign):
                raise ProgramRefused(
                    f"{_describe(statement)} is not allowed in predict "
                    "(only 'name = expression' and a final return)", _line(statement))
            operations += self._check_assign(statement)
        final = body[-1]
        if final.value is None:
            raise ProgramRefused("return needs a value", final.lineno)
        kind, ops, _ = self._expression(final.value, in_comparison=False)
        if kind != _NUM:
            raise ProgramRefused("predict must return a number, not a condition (use np.where)", final.lineno)
        operations += ops
        unread = [(name, local.line) for name, local in self.locals.items() if not local.read]
        if unread:
            name, assigned = unread[0]
            raise ProgramRefused(f"local '{name}' is assigned but its value is never used", assigned)
        return operations

    def _check_assign(self, statement: ast.Assign) -> int:
        if len(statement.targets) != 1 or not isinstance(statement.targets[0], ast.Name):
            raise ProgramRefused("assign to exactly one plain name ('x = ...'; no unpacking, no a = b = ...)",
                                 statement.lineno)
        name = statement.targets[0].id
        self._check_name_spelling(name, statement.lineno)
        if name in (FEATURES_PARAM, NUMPY_NAME, FUNCTION_NAME):
            raise ProgramRefused(f"'{name}' cannot be assigned", statement.lineno)
        # The value is checked first: `x = x * 2` reads the previous x.
        kind, ops, depends = self._expression(statement.value, in_comparison=False)
        previous = self.locals.get(name)
        if previous is not None and not previous.read:
            raise ProgramRefused(f"local '{name}' is reassigned before its value on line {previous.line} is used",
                                 statement.lineno)
        self.locals[name] = _Local(kind, statement.lineno, depends)
        return ops

    @staticmethod
    def _check_name_spelling(name: str, line: int) -> None:
        if name.startswith("_"):
            raise ProgramRefused(f"names starting with '_' are not allowed ('{name}')", line)

    # ---- expressions -----------------------------------------------------------------------------

    def _expression(self, node: ast.AST, in_comparison: bool,
                    under_minus: bool = False) -> tuple[str, int, bool]:
        """(kind, operations, depends on a feature) of an expression, refusing anything outside the language."""
        line = _line(node)
        literal = _numeric_literal(node)
        if literal is not None:
            self._add_constant(node, literal, "threshold" if in_comparison else "coefficient", under_minus)
            return _NUM, 0, False
        if isinstance(node, ast.Constant):
            what = "string" if isinstance(node.value, str) else type(node.value).__name__
            raise ProgramRefused(
                f"{what} constant {node.value!r:.40} is not allowed here (numbers only; strings only in f[\"name\"])",
                line)
        if isinstance(node, ast.Subscript):
            return self._feature(node)
        if isinstance(node, ast.Name):
            return self._read_local(node)
        if isinstance(node, ast.BinOp):
            return self._binary(node, in_comparison)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, (ast.USub, ast.UAdd)):
                kind, ops, depends = self._expression(node.operand, in_comparison,
                                                      under_minus=isinstance(node.op, ast.USub))
                if kind != _NUM:
                    raise ProgramRefused("unary minus/plus applies to numbers, not conditions", line)
                return _NUM, ops + (1 if isinstance(node.op, ast.USub) else 0), depends
            raise ProgramRefused(f"unary operator '{type(node.op).__name__}' is not allowed (only - and +)", line)
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.Call):
            return self._call(node, in_comparison)
        if isinstance(node, ast.Attribute):
            raise ProgramRefused(
                f"attribute access '.{node.attr}' is not allowed (only calls of np.{', np.'.join(NP_FUNCTIONS)})",
                line)
        raise ProgramRefused(f"{_describe(node)} is not allowed in an expression", line)

    def _add_constant(self, node: ast.AST, value: float, role: str, under_minus: bool = False) -> None:
        start = self._char_col(node.lineno, node.col_offset)
        end = self._char_col(node.end_lineno, node.end_col_offset)
        index = len(self.constants)
        self.constants.append(Constant(index, value, role, node.lineno, start, node.end_lineno, end, under_minus))
        self.literal_nodes[_node_key(node)] = index

    def _char_col(self, line: int, byte_col: int) -> int:
        """ast columns are UTF-8 byte offsets; text edits need character offsets."""
        return len(self.lines[line - 1].encode("utf-8")[:byte_col].decode("utf-8", errors="replace"))

    def _feature(self, node: ast.Subscript) -> tuple[str, int, bool]:
        line = node.lineno
        key = node.slice
        if not (isinstance(node.value, ast.Name) and node.value.id == FEATURES_PARAM):
            raise ProgramRefused(f"subscript is only allowed as {FEATURES_PARAM}[\"feature_name\"]", line)
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
            raise ProgramRefused(f"a feature must be read as {FEATURES_PARAM}[\"name\"] with a literal name", line)
        if key.value not in self.feature_names:
            raise ProgramRefused(
                f"unknown feature {key.value!r:.60} (available: {', '.join(sorted(self.feature_names))})", line)
        if key.value not in self.features_used:
            self.features_used.append(key.value)
        return _NUM, 0, True

    def _read_local(self, node: ast.Name) -> tuple[str, int, bool]:
        name, line = node.id, node.lineno
        self._check_name_spelling(name, line)
        if name == FEATURES_PARAM:
            raise ProgramRefused(f"'{FEATURES_PARAM}' can only be used as {FEATURES_PARAM}[\"feature_name\"]", line)
        if name == NUMPY_NAME:
            raise ProgramRefused(f"'{NUMPY_NAME}' can only be used to call np.{', np.'.join(NP_FUNCTIONS)}", line)
        local = self.locals.get(name)
        if local is None:
            raise ProgramRefused(f"name '{name}' is not a local assigned earlier in predict", line)
        local.read = True
        return local.kind, 0, local.depends_on_feature

    def _binary(self, node: ast.BinOp, in_comparison: bool) -> tuple[str, int, bool]:
        line = node.lineno
        symbol = _BINARY_OPERATORS.get(type(node.op))
        if symbol is None:
            raise ProgramRefused(f"operator '{type(node.op).__name__}' is not allowed (only + - * / **)", line)
        left_kind, left_ops, left_depends = self._expression(node.left, in_comparison)
        if isinstance(node.op, ast.Pow):
            exponent = _numeric_literal(node.right)
            if exponent is None:
                raise ProgramRefused("the exponent of ** must be a numeric literal", line)
            if abs(exponent) > self.limits.max_abs_exponent:
                raise ProgramRefused(
                    f"exponent {exponent} is larger in magnitude than {self.limits.max_abs_exponent}", line)
            if not left_depends:
                raise ProgramRefused("the base of ** must depend on a feature (write a constant's power as its value)",
                                     line)
            self._add_constant(node.right, exponent, "exponent")
            right_kind, right_ops, right_depends = _NUM, 0, False
        else:
            right_kind, right_ops, right_depends = self._expression(node.right, in_comparison)
        if left_kind != _NUM or right_kind != _NUM:
            raise ProgramRefused(f"'{symbol}' applies to numbers, not conditions (use np.where)", line)
        return _NUM, 1 + left_ops + right_ops, left_depends or right_depends

    def _compare(self, node: ast.Compare) -> tuple[str, int, bool]:
        line = node.lineno
        if len(node.ops) != 1:
            raise ProgramRefused("chained comparisons are not allowed (one comparison per condition)", line)
        symbol = _COMPARISONS.get(type(node.ops[0]))
        if symbol is None:
            raise ProgramRefused(
                f"comparison '{type(node.ops[0]).__name__}' is not allowed (only < <= > >=)", line)
        left_kind, left_ops, left_depends = self._expression(node.left, in_comparison=True)
        right_kind, right_ops, right_depends = self._expression(node.comparators[0], in_comparison=True)
        if left_kind != _NUM or right_kind != _NUM:
            raise ProgramRefused("comparisons apply to numbers, not conditions", line)
        return _BOOL, 1 + left_ops + right_ops, left_depends or right_depends

    def _call(self, node: ast.Call, in_comparison: bool) -> tuple[str, int, bool]:
        line = node.lineno
        function = node.func
        if not (isinstance(function, ast.Attribute) and isinstance(function.value, ast.Name)
                and function.value.id == NUMPY_NAME and function.attr in NP_FUNCTIONS):
            called = ast.unparse(function) if isinstance(function, (ast.Name, ast.Attribute)) else _describe(function)
            raise ProgramRefused(
                f"call of '{called:.60}' is not allowed (only np.{', np.'.join(NP_FUNCTIONS)})", line)
        name = function.attr
        if node.keywords:
            raise ProgramRefused(f"np.{name} takes no keyword arguments here", line)
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise ProgramRefused(f"starred arguments are not allowed in np.{name}", line)
        arity = NP_FUNCTIONS[name]
        if len(node.args) != arity:
            raise ProgramRefused(f"np.{name} takes exactly {arity} argument(s), got {len(node.args)}", line)
        operations, depends = 1, False
        for position, argument in enumerate(node.args):
            kind, ops, arg_depends = self._expression(argument, in_comparison)
            wanted = _BOOL if name == "where" and position == 0 else _NUM
            if kind != wanted:
                raise ProgramRefused(
                    f"argument {position + 1} of np.{name} must be a {wanted}, not a {kind}", line)
            operations += ops
            depends = depends or arg_depends
        return _NUM, operations, depends


def _compiled_source(program: CheckedProgram) -> str:
    """Python source of `def predict(f, _k)`, generated from the checked AST (fully parenthesised,
    so evaluation order is exactly the AST's): fittable literal j becomes `_k[j]`; exponents and
    thresholds become float literals, so integers never take part in arithmetic and numpy's fast
    paths (x ** 2.0, x ** 0.5) apply. Generating text is several times faster than copying and
    transforming the AST, and nothing but checked node types can be emitted."""
    fittable_position = {c.index: j for j, c in enumerate(program.fittable)}

    def emit(node: ast.AST) -> str:
        constant = program.constant_for(node)
        if constant is not None:
            if constant.fittable:
                return f"{_CONSTANTS_PARAM}[{fittable_position[constant.index]}]"
            return f"({constant.value!r})"
        if isinstance(node, ast.Subscript):
            return f"{FEATURES_PARAM}[{node.slice.value!r}]"
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.BinOp):
            return f"({emit(node.left)} {_BINARY_OPERATORS[type(node.op)]} {emit(node.right)})"
        if isinstance(node, ast.UnaryOp):
            return f"({'-' if isinstance(node.op, ast.USub) else '+'}{emit(node.operand)})"
        if isinstance(node, ast.Compare):
            return f"({emit(node.left)} {_COMPARISONS[type(node.ops[0])]} {emit(node.comparators[0])})"
        if isinstance(node, ast.Call):
            return f"{NUMPY_NAME}.{node.func.attr}({', '.join(emit(a) for a in node.args)})"
        raise AssertionError(f"unchecked node {type(node).__name__} reached the compiler")

    lines = [f"def {FUNCTION_NAME}({FEATURES_PARAM}, {_CONSTANTS_PARAM}):"]
    for statement in program.function.body:
        if isinstance(statement, ast.Assign):
            lines.append(f"    {statement.targets[0].id} = {emit(statement.value)}")
        elif isinstance(statement, ast.Return):
            lines.append(f"    return {emit(statement.value)}")
        elif not _is_docstring(statement):
            raise AssertionError(f"unchecked statement {type(statement).__name__} reached the compiler")
    return "\n".join(lines) + "\n"


def _compile(program: CheckedProgram) -> Callable[[Mapping[str, np.ndarray], np.ndarray], np.ndarray]:
    code = compile(_compiled_source(program), "<program>", "exec")
    namespace: dict[str, object] = {"__builtins__": {}, NUMPY_NAME: _SAFE_NUMPY}
    exec(code, namespace)  # only defines the function: no defaults, decorators or annotations to evaluate
    return namespace[FUNCTION_NAME]
