"""The evolved-program language: refusals (hostile corpus), operation counts, constants, compilation."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from stepformula.errors import InputError
from stepformula.program import Limits, ProgramRefused, check_program

# One hostile program per file; line 1 is `# <what it attempts> | expect: <part of the refusal
# reason>`, and SENTINEL is replaced by a temporary path the program would create if it ever ran.
HOSTILE = sorted((Path(__file__).parent / "hostile").glob("*.prog"))
# The shipped data has no kv_max, kv_min, kv_std: they must be refused as unknown.
FEATURES = ("prefill_tokens", "decode_tokens", "scheduled_tokens", "num_prefill_reqs", "num_decode_reqs",
            "kv_mean", "kv_sum", "hidden_dim", "num_layers", "num_heads", "intermediate_dim",
            "peak_flops_bf16", "peak_bandwidth", "num_experts", "active_experts")


def _features(n: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.uniform(1.0, 100.0, n) for name in FEATURES}


def _hostile_text(path: Path, sentinel: Path) -> tuple[str, str]:
    text = path.read_text()
    expected = text.splitlines()[0].split("| expect: ", 1)[1].strip()
    return text.replace("SENTINEL", str(sentinel)), expected


# ---- hostile corpus ------------------------------------------------------------------------------

def test_corpus_is_large_and_documented():
    assert len(HOSTILE) >= 30
    for path in HOSTILE:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and "| expect: " in first, path.name


@pytest.mark.parametrize("path", HOSTILE, ids=lambda p: p.stem)
def test_hostile_program_is_refused_with_its_reason_before_running(path, tmp_path):
    sentinel = tmp_path / "sentinel"
    text, expected = _hostile_text(path, sentinel)
    with pytest.raises(ProgramRefused) as refusal:
        check_program(text, FEATURES)
    assert expected in refusal.value.reason
    assert isinstance(refusal.value, InputError) and refusal.value.source == "program"
    assert not sentinel.exists()


def test_whole_corpus_is_refused_without_spending_time(tmp_path):
    # Not a benchmark: a program that ran its loop or sleep would take far longer than this.
    start = time.perf_counter()
    for path in HOSTILE:
        text, _ = _hostile_text(path, tmp_path / "sentinel")
        with pytest.raises(ProgramRefused):
            check_program(text, FEATURES)
    assert time.perf_counter() - start < 2.0
    assert not (tmp_path / "sentinel").exists()


def test_sentinel_would_catch_execution(tmp_path):
    # Control for the corpus test: run as plain Python, a hostile program does create the sentinel.
    sentinel = tmp_path / "sentinel"
    text, _ = _hostile_text(Path(__file__).parent / "hostile" / "open_file.prog", sentinel)
    namespace: dict = {}
    exec(compile(text, "<control>", "exec"), namespace)
    namespace["predict"](_features())
    assert sentinel.exists()


def test_refusal_names_the_line():
    text = 'def predict(f):\n    a = f["decode_tokens"]\n    b = open("x")\n    return a\n'
    with pytest.raises(ProgramRefused, match=r"^program: line 3: call of 'open'"):
        check_program(text, FEATURES)


def test_deep_nesting_is_refused_not_a_recursion_error():
    # Within the parser's limits but past ours: must be a refusal, not a crash.
    text = "def predict(f):\n    return " + "np.log(" * 70 + 'f["decode_tokens"]' + ")" * 70 + "\n"
    with pytest.raises(ProgramRefused, match="nesting deeper than 64"):
        check_program(text, FEATURES)
    with pytest.raises(ProgramRefused, match="characters"):
        check_program("# " + "x" * 30_000 + "\ndef predict(f):\n    return 1.0\n", FEATURES)


def test_limits_are_parameters():
    text = 'def predict(f):\n    return f["decode_tokens"] * 2.0 + 1.0\n'
    assert check_program(text, FEATURES).num_operations == 2
    with pytest.raises(ProgramRefused, match="hard limit 1"):
        check_program(text, FEATURES, Limits(max_operations=1))
    with pytest.raises(ProgramRefused, match="larger in magnitude than 2"):
        check_program('def predict(f):\n    return f["decode_tokens"] ** 3\n', FEATURES, Limits(max_abs_exponent=2))


def test_unused_and_overwritten_locals_are_refused():
    with pytest.raises(ProgramRefused, match="'a' is assigned but its value is never used"):
        check_program('def predict(f):\n    a = f["decode_tokens"]\n    return 1.0\n', FEATURES)
    with pytest.raises(ProgramRefused, match="reassigned before its value on line 2 is used"):
        check_program('def predict(f):\n    a = f["decode_tokens"]\n    a = 2.0\n    return a\n', FEATURES)


def test_feature_availability_comes_from_the_parameter():
    text = 'def predict(f):\n    return f["kv_std"] + 1.0\n'
    with pytest.raises(ProgramRefused, match="unknown feature 'kv_std'"):
        check_program(text, FEATURES)
    assert check_program(text, [*FEATURES, "kv_std"]).features_used == ("kv_std",)


# ---- operation counts ----------------------------------------------------------------------------

OPERATION_TABLE = [
    # (program body, hand count, why)
    ('return f["decode_tokens"]', 0, "a feature is free"),
    ("return 2.0", 0, "a literal is free"),
    ('return -2.0 * f["decode_tokens"]', 1, "a minus on a literal is part of it; one *"),
    ('return -f["decode_tokens"] + 3.0', 2, "unary minus on an expression counts"),
    ('return +f["decode_tokens"]', 0, "unary plus is free"),
    ('return --2.0 * f["decode_tokens"]', 2, "outer minus counts, inner is the literal's sign"),
    ('return f["decode_tokens"] ** 2', 1, "** counts once; its exponent is free"),
    ('return f["decode_tokens"] ** -0.5 * 3.0', 2, "** and *"),
    ('a = f["prefill_tokens"] * f["hidden_dim"]\n    return a + a * a', 3, "a local counts once however often read"),
    ('return f["prefill_tokens"] * f["hidden_dim"] + f["prefill_tokens"] * f["hidden_dim"]', 3,
     "an expression written twice counts twice"),
    ('return np.where(f["prefill_tokens"] > 0, 1.0 + f["prefill_tokens"], 2.0)', 3, "where, >, +"),
    ('big = f["scheduled_tokens"] >= 512.0\n    return np.where(big, f["scheduled_tokens"] * 0.5, 100.0)', 3,
     "a condition held in a local: >=, where, *"),
    ('return np.log1p(f["kv_sum"]) + np.sqrt(f["decode_tokens"]) * np.exp(-1.0)'
     ' + np.abs(np.log(f["hidden_dim"]))', 8, "five unary functions, *, +, +"),
    ('return np.maximum(f["decode_tokens"], np.minimum(f["prefill_tokens"], 3.0)) / 2.0', 3, "maximum, minimum, /"),
    ('x = f["decode_tokens"] + 1.0\n    x = x * x\n    return x - 0.5', 3, "a reassigned local: each statement once"),
    ('return -(-f["decode_tokens"])', 2, "two minus signs on an expression"),
]


@pytest.mark.parametrize("body,count,why", OPERATION_TABLE, ids=[row[2] for row in OPERATION_TABLE])
def test_operation_count_matches_hand_count(body, count, why):
    program = check_program(f"import numpy as np\n\ndef predict(f):\n    {body}\n", FEATURES)
    assert program.num_operations == count, why


def test_thirty_operation_program_counts_thirty():
    text = '''
import numpy as np

def predict(f):
    tokens = f["scheduled_tokens"]                                                     # 0
    hidden = f["hidden_dim"]                                                           # 0
    layer_params = 4.0 * hidden * hidden + 3.0 * hidden * f["intermediate_dim"]        # 5
    params = f["num_layers"] * layer_params                                            # 1
    compute_us = 2.0e6 * tokens * params / f["peak_flops_bf16"]                        # 3
    kv_bytes = 4.0 * f["kv_sum"] * hidden * f["num_layers"] / f["num_heads"]           # 4
    memory_us = 1.0e6 * (2.0 * params + kv_bytes) / f["peak_bandwidth"]               # 4
    attention_us = 0.002 * f["prefill_tokens"] * np.sqrt(f["kv_mean"] + 1.0)          # 4
    overhead_us = 150.0 + 2.0 * f["num_decode_reqs"] + 8.0 * f["num_prefill_reqs"]     # 4
    busy_us = np.maximum(compute_us, memory_us) + attention_us                         # 2
    return np.where(tokens > 0, busy_us + overhead_us, overhead_us)                    # 3
'''
    assert check_program(text, FEATURES).num_operations == 30


# ---- constants and text rewriting ----------------------------------------------------------------

ROLES_PROGRAM = '''"""Module docstring."""
import numpy as np

def predict(f):
    """Function docstring."""
    big = f["scheduled_tokens"] > 512  # a threshold
    x = np.where(big, 2.5 * f["prefill_tokens"], -80) + 3 * f["decode_tokens"] ** 0.5
    return x * -(4.0) + 1e-3
'''


def test_constants_have_roles_values_and_exact_spans():
    program = check_program(ROLES_PROGRAM, FEATURES)
    got = [(c.value, c.role) for c in program.constants]
    assert got == [(512.0, "threshold"), (2.5, "coefficient"), (-80.0, "coefficient"), (3.0, "coefficient"),
                   (0.5, "exponent"), (-4.0, "coefficient"), (1e-3, "coefficient")]
    lines = ROLES_PROGRAM.split("\n")
    spans = [lines[c.line - 1][c.col:c.end_col] for c in program.constants]
    assert spans == ["512", "2.5", "-80", "3", "0.5", "-(4.0)", "1e-3"]
    assert [c.value for c in program.fittable] == [2.5, -80.0, 3.0, -4.0, 1e-3]


def test_with_constants_round_trips_exactly_and_keeps_comments():
    program = check_program(ROLES_PROGRAM, FEATURES)
    new_values = [0.1 + 0.2, -1.0 / 3.0, 5e-324, 1.7976931348623157e308, -0.0]
    text = program.with_constants(new_values)
    assert "# a threshold" in text and '"""Function docstring."""' in text
    again = check_program(text, FEATURES)
    got = [c.value for c in again.fittable]
    assert [v.hex() for v in got] == [float(v).hex() for v in new_values]  # bit-exact, -0.0 included
    assert math.copysign(1.0, got[-1]) < 0
    assert again.num_operations == program.num_operations  # a negative value adds no operation
    assert [c.value for c in again.constants if not c.fittable] == [512.0, 0.5]


def test_with_constants_handles_non_ascii_columns_and_crlf():
    text = ('def predict(f):\r\n    note = f["decode_tokens"]  # é\r\n'
            '    return note * 2.0 + f["prefill_tokens"] * 0.5  # µs ü\r\n')
    program = check_program(text, FEATURES)
    rewritten = program.with_constants([3.0, 4.0])
    assert "note * 3.0 + f[\"prefill_tokens\"] * 4.0  # µs ü" in rewritten


def test_with_constants_keeps_a_literal_a_separate_token():
    program = check_program('def predict(f):\n    return-2.0*f["decode_tokens"]\n', FEATURES)
    rewritten = program.with_constants([113.5])
    assert "return 113.5*f" in rewritten
    assert check_program(rewritten, FEATURES).fittable_values.tolist() == [113.5]


@pytest.mark.parametrize("expression", ['-(-2.0) * f["decode_tokens"]', '- -2.0 * f["decode_tokens"]',
                                        '+2.0 * f["decode_tokens"]', 'f["decode_tokens"] - -2.0'])
@pytest.mark.parametrize("value", [3.0, -3.0, 0.0, -0.0])
def test_with_constants_never_changes_the_operation_count(expression, value):
    program = check_program(f"def predict(f):\n    return {expression}\n", FEATURES)
    again = check_program(program.with_constants([value]), FEATURES)
    assert again.num_operations == program.num_operations
    assert again.fittable_values[0].hex() == float(value).hex()


def test_with_constants_rejects_wrong_count_and_non_finite():
    program = check_program(ROLES_PROGRAM, FEATURES)
    with pytest.raises(ValueError, match="expected 5"):
        program.with_constants([1.0])
    with pytest.raises(ValueError, match="finite"):
        program.with_constants([1.0, 2.0, 3.0, float("nan"), 4.0])


# ---- compilation and execution -------------------------------------------------------------------

def test_compiled_program_computes_the_formula():
    f = _features()
    program = check_program(ROLES_PROGRAM, FEATURES)
    expected = (np.where(f["scheduled_tokens"] > 512, 2.5 * f["prefill_tokens"], -80.0)
                + 3.0 * f["decode_tokens"] ** 0.5) * -4.0 + 1e-3
    np.testing.assert_allclose(program.compile()(f), expected, rtol=1e-15)
    assert program.features_used == ("scheduled_tokens", "prefill_tokens", "decode_tokens")


def test_parametric_form_uses_the_given_constants():
    f = _features()
    program = check_program('def predict(f):\n    return 2.0 * f["decode_tokens"] + 1.0\n', FEATURES)
    run = program.compile_parametric()
    np.testing.assert_array_equal(run(f, np.array([3.0, -5.0])), 3.0 * f["decode_tokens"] - 5.0)


def test_constant_program_returns_a_scalar():
    program = check_program("def predict(f):\n    return 450.0\n", FEATURES)
    assert np.ndim(program.compile()(_features())) == 0


def test_integer_literals_compute_as_float64():
    program = check_program('def predict(f):\n    return f["decode_tokens"] ** 2 * 0 + 7 / 2\n', FEATURES)
    result = program.compile()(_features())
    assert result.dtype == np.float64 and np.all(result == 3.5)


def test_compiled_code_sees_no_builtins_and_a_closed_numpy():
    program = check_program('import numpy as np\ndef predict(f):\n    return np.abs(f["decode_tokens"])\n', FEATURES)
    run = program.compile_parametric()
    assert run.__globals__["__builtins__"] == {}
    safe_np = run.__globals__["np"]
    assert not hasattr(safe_np, "save") and not hasattr(safe_np, "__dict__")
    with pytest.raises(AttributeError):
        safe_np.abs = print


def test_checking_is_deterministic():
    a = check_program(ROLES_PROGRAM, FEATURES)
    b = check_program(ROLES_PROGRAM, FEATURES)
    assert a.constants == b.constants and a.num_operations == b.num_operations
