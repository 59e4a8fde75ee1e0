"""The Go emitter: every construct of the program language, refusals, gofmt, staleness, vectors,
and end to end: generated formulas and vectors in a copy of go/, checked by `go vet` and `go test`."""

from __future__ import annotations

import ast
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from stepformula import golang
from stepformula.golang import (FEATURE_NAMES, GO_FIELDS, EmitError, StaleGeneratedFile,
                                batch_row, check_generated, edge_case_rows, go_function_name,
                                go_source, gofmt, program_sha256, write_go, write_vectors)
from stepformula.program import check_program

GO_MODULE = Path(__file__).resolve().parents[1] / "go"
GO = shutil.which("go") or shutil.which("go", path="/usr/local/go/bin")
needs_go = pytest.mark.skipif(GO is None, reason="the `go` binary is not on PATH nor in /usr/local/go/bin")

FACTS = {
    "llama-2-70b tp4": {"hidden_dim": 8192.0, "num_layers": 80.0, "num_heads": 64.0,
                        "intermediate_dim": 28672.0, "num_experts": 1.0, "active_experts": 1.0,
                        "peak_flops_bf16": 989.5e12 * 4, "peak_bandwidth": 3.35e12 * 4},
    "mixtral-8x7b tp2": {"hidden_dim": 4096.0, "num_layers": 32.0, "num_heads": 32.0,
                         "intermediate_dim": 14336.0, "num_experts": 8.0, "active_experts": 2.0,
                         "peak_flops_bf16": 989.5e12 * 2, "peak_bandwidth": 3.35e12 * 2},
}


def program(*body: str, docstrings: bool = False) -> str:
    """Program text with `body` as the lines of predict."""
    head = ['"""A module docstring."""', "import numpy as np", "", "def predict(f):"]
    if docstrings:
        head.append('    """A function docstring."""')
    return "\n".join(head + [f"    {line}" for line in body]) + "\n"


def function_body(source: str) -> str:
    """The statements of the generated Predict function, one per line, without spaces (gofmt
    spaces operators by nesting depth, which is not what these tests are about)."""
    body = source.split(") float64 {\n", 1)[1].rsplit("}", 1)[0]
    return "\n".join(line.replace(" ", "").strip() for line in body.splitlines())


# The simulator's old linear model with a where: the shape the lead's real programs have.
BLACKBOX = program(
    'linear = -0.5 + 0.3 * f["prefill_tokens"] + 12.0 * f["decode_tokens"]',
    'return np.where(linear > 1.0, linear, 1.0)',
)
# Everything that produces NaN, ±Inf or -0 in numpy.
NASTY = program(
    'ratio = f["decode_tokens"] / f["prefill_tokens"]',
    'logs = np.log(f["kv_min"]) + np.sqrt(f["kv_std"] - 1.0)',
    'mixed = np.minimum(ratio, logs) + np.maximum(logs, 2.0) + f["kv_sum"] / 0.0',
    'return np.where(f["scheduled_tokens"] > 100.0, mixed, ratio ** 2 + f["decode_tokens"] ** 0.5'
    ' + f["kv_sum"] ** -1 + f["kv_mean"] ** 1.5)',
)

# One program per construct of the language: (program, snippets its Go body must contain).
CONSTRUCTS: dict[str, tuple[str, list[str]]] = {
    "add": (program('return f["prefill_tokens"] + 2.5'), ["return f.PrefillTokens + 2.5"]),
    "sub_keeps_grouping": (
        program('return f["prefill_tokens"] - f["decode_tokens"] - (f["kv_sum"] - 1.0)'),
        ["f.PrefillTokens - f.DecodeTokens - (f.KVSum - 1.0)"]),
    "mul_rounded_before_add": (
        program('return 0.3 * f["prefill_tokens"] + f["decode_tokens"] * f["kv_mean"] * 2.0'),
        ["float64(0.3*f.PrefillTokens) + float64(float64(f.DecodeTokens*f.KVMean)*2.0)"]),
    "fma_sensitive": (program('return f["kv_sum"] * 1.1 - f["kv_sum"] * 1.1'),
                      ["float64(f.KVSum*1.1) - float64(f.KVSum*1.1)"]),
    "div": (program('return f["decode_tokens"] / f["prefill_tokens"] / (f["kv_sum"] / 3.0)'),
            ["f.DecodeTokens / f.PrefillTokens / (f.KVSum / 3.0)"]),
    "div_by_literal_zero": (
        program('return f["decode_tokens"] / 0.0 + f["prefill_tokens"] / -0.0 + f["kv_sum"] / (1.0 - 1.0)'),
        ["f.DecodeTokens/math.Copysign(0, 1) + f.PrefillTokens/math.Copysign(0, -1)"]),
    "pow_two": (program('return f["kv_mean"] ** 2 + (f["kv_sum"] - 3.0) ** 2.0'),
                ["square(f.KVMean) + square(f.KVSum-3.0)"]),
    "pow_half": (program('return 1.0 / (-f["decode_tokens"]) ** 0.5 + f["kv_sum"] ** 0.5'),
                 ["1.0 / math.Sqrt(-f.DecodeTokens)"]),
    "pow_minus_one": (program('return f["prefill_tokens"] ** -1 + (f["kv_sum"] * 2.0) ** -1'),
                      ["1 / f.PrefillTokens", "1 / (f.KVSum * 2.0)"]),
    "pow_one_and_zero": (
        program('return (f["kv_sum"] * 3.0) ** 1 + (f["decode_tokens"] / f["prefill_tokens"]) ** 0'),
        ["float64(f.KVSum*3.0) + math.Pow(f.DecodeTokens/f.PrefillTokens, 0.0)"]),
    "pow_general": (
        program('return f["kv_mean"] ** 1.5 + f["prefill_tokens"] ** -2 + f["kv_sum"] ** 3'
                ' + (f["decode_tokens"] - 5.0) ** 0.25'),
        ["math.Pow(f.KVMean, 1.5)", "math.Pow(f.PrefillTokens, -2.0)", "math.Pow(f.KVSum, 3.0)"]),
    "unary_minus": (program('return -f["prefill_tokens"] - -(f["decode_tokens"] * 2.0) + -(-f["kv_sum"])'),
                    ["-f.PrefillTokens - -float64(f.DecodeTokens*2.0) + -(-f.KVSum)"]),
    "unary_plus": (program('return +f["prefill_tokens"] * 2.0'), ["return float64(f.PrefillTokens * 2.0)"]),
    "compare_lt": (program('return np.where(f["num_decode_reqs"] < 127, 1.0, 2.0)'),
                   ["where(f.NumDecodeReqs < 127.0, 1.0, 2.0)"]),
    "compare_le": (program('return np.where(f["num_decode_reqs"] <= 127, 1.0, 2.0)'),
                   ["where(f.NumDecodeReqs <= 127.0, 1.0, 2.0)"]),
    "compare_gt": (program('return np.where(f["kv_mean"] * 2.0 > f["kv_max"] + 1.0, 1.0, 2.0)'),
                   ["where(f.KVMean*2.0 > f.KVMax+1.0, 1.0, 2.0)"]),
    "compare_ge": (program('return np.where(f["prefill_tokens"] >= 2048.0, 1.0, 2.0)'),
                   ["where(f.PrefillTokens >= 2048.0, 1.0, 2.0)"]),
    "where_untaken_branches_are_nan": (
        program('return np.where(f["prefill_tokens"] > 0.0, f["decode_tokens"] / f["prefill_tokens"],'
                ' np.log(f["prefill_tokens"]) * f["decode_tokens"])'),
        ["where(f.PrefillTokens > 0.0, f.DecodeTokens/f.PrefillTokens, float64(math.Log(f.PrefillTokens)*f.DecodeTokens))"]),
    "where_condition_local": (
        program('busy = f["scheduled_tokens"] > 512', 'return np.where(busy, f["kv_sum"], 1.0)'),
        ["busy := f.ScheduledTokens > 512.0", "return where(busy, f.KVSum, 1.0)"]),
    "minimum_maximum_nan": (
        program('return np.minimum(f["decode_tokens"] / f["prefill_tokens"], 3.0)'
                ' + np.maximum(np.log(f["kv_min"]), f["kv_std"] * 0.5)'),
        ["minimum(f.DecodeTokens/f.PrefillTokens, 3.0) + maximum(math.Log(f.KVMin), float64(f.KVStd*0.5))"]),
    "minimum_signed_zero": (program('return 1.0 / np.minimum(-f["decode_tokens"], f["prefill_tokens"])'),
                            ["1.0 / minimum(-f.DecodeTokens, f.PrefillTokens)"]),
    "maximum_signed_zero": (program('return 1.0 / np.maximum(f["prefill_tokens"], -f["decode_tokens"])'),
                            ["1.0 / maximum(f.PrefillTokens, -f.DecodeTokens)"]),
    "log": (program('return np.log(f["kv_min"]) + np.log(f["kv_max"] - 100.0)'), ["math.Log(f.KVMin)"]),
    "log1p": (program('return np.log1p(-f["num_decode_reqs"])'), ["math.Log1p(-f.NumDecodeReqs)"]),
    "sqrt": (program('return np.sqrt(f["kv_std"] - 1.0)'), ["math.Sqrt(f.KVStd - 1.0)"]),
    "exp": (program('return np.exp(f["kv_sum"] / 1000.0)'), ["math.Exp(f.KVSum / 1000.0)"]),
    "abs": (program('return np.abs(f["decode_tokens"] - f["prefill_tokens"])'),
            ["math.Abs(f.DecodeTokens - f.PrefillTokens)"]),
    "locals_and_reassignment": (
        program('per_token = f["kv_sum"] / f["scheduled_tokens"]', 'total = per_token * 2.0',
                'per_token = per_token + total', 'return per_token'),
        ["perToken := f.KVSum / f.ScheduledTokens", "total := float64(perToken * 2.0)",
         "perToken = perToken + total", "return perToken"]),
    "condition_local_reassigned_as_number": (
        program('x = f["decode_tokens"] > 3.0', 'y = np.where(x, 2.0, 3.0)', 'x = y * f["kv_sum"]', 'return x'),
        ["x := f.DecodeTokens > 3.0", "y := where(x, 2.0, 3.0)", "x2 := float64(y * f.KVSum)", "return x2"]),
    "constant_local": (program('scale = 1e-06', 'return f["kv_sum"] * scale'),
                       ["scale := 1e-06", "return float64(f.KVSum * scale)"]),
    "go_reserved_local_names": (
        program('type = f["prefill_tokens"] + 1.0', 'math = type * 2.0', 'where = np.where(math > 10.0, math, type)',
                'len = where / 2.0', 'return len'),
        ["type2 := f.PrefillTokens + 1.0", "math2 := float64(type2 * 2.0)",
         "where2 := where(math2 > 10.0, math2, type2)", "len2 := where2 / 2.0", "return len2"]),
    "folded_constants": (
        program('return f["prefill_tokens"] * (0.1 + 0.2) + 2 * 3 - np.log(2.0) * f["decode_tokens"]'
                ' + f["kv_sum"] * (1.0 / 0.0) + np.where(2.0 < 3.0, f["kv_mean"], 0.0)'),
        ["float64(f.PrefillTokens*0.30000000000000004) + 6.0 - float64(0.6931471805599453*f.DecodeTokens)",
         "float64(f.KVSum*math.Inf(1))", "where(true, f.KVMean, 0.0)"]),
    "negative_zero_literal": (program('return 1.0 / (-0.0 * f["prefill_tokens"] - 0.0)'),
                              ["1.0 / (float64(math.Copysign(0, -1)*f.PrefillTokens) - 0.0)"]),
    "literals_round_trip": (
        program('return f["kv_sum"] * 0.1 + 1e-300 * f["kv_mean"] + f["decode_tokens"] * 5e-324'
                ' + 1.7976931348623157e308 * f["num_layers"] + 123456789.12345679 + 100000000000000000000'),
        ["0.1", "1e-300", "5e-324", "1.7976931348623157e+308", "123456789.12345679", "1e+20"]),
    "docstrings": (program('return f["kv_sum"]', docstrings=True), ["return f.KVSum"]),
}


def emit(text: str, target: str = "duration_us") -> str:
    return go_source(text, target=target, program_path="programs/x.py", test_mape=0.25)


# ---- the emitter ---------------------------------------------------------------------------------


def test_go_fields_are_the_features_in_gos_order():
    from stepformula.features import FEATURES
    assert set(GO_FIELDS) == set(FEATURES)
    go_names = re.search(r"var FeatureNames = \[18\]string\{(.*?)\}", (GO_MODULE / "features.go").read_text(), re.S)
    assert re.findall(r'"(\w+)"', go_names.group(1)) == list(FEATURE_NAMES)


@pytest.mark.parametrize("name", sorted(CONSTRUCTS))
def test_every_construct_is_emitted(name):
    text, snippets = CONSTRUCTS[name]
    source = emit(text)
    body = function_body(source)
    for snippet in snippets:
        assert snippet.replace(" ", "") in body, f"{snippet!r} not in:\n{body}"
    assert gofmt(source) == source  # gofmt-stable


def test_header_records_the_program():
    text = BLACKBOX
    source = go_source(text, target="period_us", program_path="programs/best.py", test_mape=0.0871)
    lines = source.splitlines()
    assert lines[0] == "// Code generated by stepformula; DO NOT EDIT."
    assert f"// Program SHA256: {program_sha256(text)}" in lines
    assert '// Program:        "programs/best.py"' in lines
    assert "// Test MAPE:      0.0871 (8.71%)" in lines
    assert f"// Operations:     {check_program(text, FEATURE_NAMES).num_operations}" in lines
    assert "Predict:       PredictPeriodUS," in source
    assert "func PredictPeriodUS(f Features) float64 {" in source
    assert 'import "math"' not in source  # imported only when used
    # the header is not the package doc: a blank line separates it from the package clause
    assert "\n\npackage steptime\n" in source


def test_operations_argument_must_match_the_program():
    with pytest.raises(golang.InputError, match="operations"):
        go_source(BLACKBOX, target="duration_us", program_path="p.py", test_mape=0.1, operations=99)


def test_program_path_is_quoted_not_pasted():
    source = go_source(BLACKBOX, target="duration_us", program_path='a "b"\nc\\d', test_mape=0.1)
    assert '// Program:        "a \\"b\\"\\u000ac\\\\d"' in source


@pytest.mark.parametrize("mutate, name", [
    (lambda ret: setattr(ret.value, "op", ast.FloorDiv()), "FloorDiv"),
    (lambda ret: setattr(ret.value, "op", ast.Mod()), "Mod"),
    (lambda ret: setattr(ret, "value", ast.IfExp(test=ret.value.left, body=ret.value.left,
                                                 orelse=ret.value.right, lineno=ret.lineno)), "IfExp"),
    (lambda ret: setattr(ret, "value", ast.BoolOp(op=ast.And(), values=[ret.value.left, ret.value.right],
                                                  lineno=ret.lineno)), "BoolOp"),
    (lambda ret: setattr(ret.value, "right", ast.Constant(1j, lineno=9, col_offset=0)), "Constant"),
    (lambda ret: setattr(ret.value.left.func, "attr", "tanh"), "np.tanh"),
])
def test_unsupported_node_is_refused_by_name(mutate, name):
    checked = check_program(program('return np.log(f["kv_sum"]) + 2.0'), FEATURE_NAMES)
    mutate(checked.function.body[-1])
    with pytest.raises(EmitError, match=re.escape(name)):
        emit(checked)


def test_unsupported_statement_is_refused_by_name():
    checked = check_program(program('x = f["kv_sum"]', 'return x'), FEATURE_NAMES)
    statement = checked.function.body[0]
    checked.function.body[0] = ast.AugAssign(target=statement.targets[0], op=ast.Add(),
                                             value=statement.value, lineno=statement.lineno)
    with pytest.raises(EmitError, match="AugAssign"):
        emit(checked)


def test_target_names():
    assert go_function_name("duration_us") == "PredictDurationUS"
    assert go_function_name("period_us") == "PredictPeriodUS"
    assert go_function_name("kv_time_ms") == "PredictKVTimeMS"
    for bad in ("Duration", "duration-us", "", "_x", "a__b", "../x"):
        with pytest.raises(golang.InputError):
            go_function_name(bad)


def test_gofmt_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(golang.shutil, "which", lambda *a, **k: None)
    with pytest.raises(golang.GoToolchainMissing, match="gofmt not found"):
        emit(BLACKBOX)


# ---- generated files on disk ---------------------------------------------------------------------


def test_check_generated_detects_a_hand_edit(tmp_path):
    args = dict(target="duration_us", program_path="programs/best.py", test_mape=0.1)
    path = write_go(BLACKBOX, tmp_path, **args)
    assert path == tmp_path / "duration_us_formula.go"
    assert not list(tmp_path.glob(".*"))  # the atomic write left no temporary file
    check_generated(BLACKBOX, tmp_path, **args)  # fresh: no error

    path.write_text(path.read_text().replace("0.3*f.PrefillTokens", "0.31*f.PrefillTokens"))
    with pytest.raises(StaleGeneratedFile) as error:
        check_generated(BLACKBOX, tmp_path, **args)
    message = str(error.value)
    assert "differs from what its program generates" in message
    assert "-\tlinear := -0.5 + float64(0.31*f.PrefillTokens)" in message
    assert "+\tlinear := -0.5 + float64(0.3*f.PrefillTokens)" in message

    with pytest.raises(StaleGeneratedFile, match="differs"):  # another program's file
        check_generated(NASTY, tmp_path, **args)
    path.unlink()
    with pytest.raises(StaleGeneratedFile, match="does not exist"):
        check_generated(BLACKBOX, tmp_path, **args)


# ---- vectors -------------------------------------------------------------------------------------


def test_write_vectors_encodes_non_finite_floats(tmp_path):
    rows = edge_case_rows(NASTY, FACTS).rows
    path = tmp_path / "period_us_vectors.json"
    document = write_vectors(NASTY, rows, path, target="period_us")
    text = path.read_text()
    assert "NaN" in text and "Infinity" not in text
    assert json.loads(text) == document
    wants = [v["want"] for v in document["vectors"]]
    assert {"NaN", "+Inf"} <= set(w for w in wants if isinstance(w, str))
    assert document["program_sha256"] == program_sha256(NASTY)
    assert all(set(v["features"]) == set(FEATURE_NAMES) for v in document["vectors"])
    # want is what the compiled program predicts
    predict = check_program(NASTY, FEATURE_NAMES).compile()
    first = {n: np.array([rows[3][1][n]]) for n in FEATURE_NAMES}
    with np.errstate(all="ignore"):
        expected = float(predict(first)[0])
    got = document["vectors"][3]["want"]
    assert (got == "NaN" and math.isnan(expected)) or got == golang._json_float(expected)


def test_write_vectors_refuses_incomplete_rows(tmp_path):
    with pytest.raises(golang.InputError, match="missing"):
        write_vectors(BLACKBOX, [("x", {"prefill_tokens": 1.0})], tmp_path / "v.json", target="duration_us")
    with pytest.raises(golang.InputError, match="no feature rows"):
        write_vectors(BLACKBOX, [], tmp_path / "v.json", target="duration_us")


def test_edge_cases_take_every_branch_and_report_impossible_ones():
    text = program('return np.where(f["kv_mean"] > 2000.0, 1.0, 2.0) + np.where(f["kv_sum"] < -1.0, 3.0, 4.0)'
                   ' + np.where(f["decode_tokens"] / f["prefill_tokens"] > 1e15, 5.0, 6.0)')
    found = edge_case_rows(text, FACTS)
    names = [name for name, _ in found.rows]
    assert names[0] == "all features zero"
    assert any(n.startswith("pure decode") for n in names) and any(n.startswith("largest KV") for n in names)
    assert len(names) == len(set(names))
    # kv_sum < -1 is impossible and reported; every other branch is taken by some row.
    assert len(found.uncovered) == 1 and found.uncovered[0].endswith("condition true")
    column = {n: np.array([r[n] for _, r in found.rows]) for n in FEATURE_NAMES}
    with np.errstate(all="ignore"):
        for condition in (column["kv_mean"] > 2000.0, column["decode_tokens"] / column["prefill_tokens"] > 1e15):
            assert condition.any() and not condition.all()
        assert (column["prefill_tokens"] == 0).any()  # a zero divisor


def test_folding_keeps_pythons_errors():
    # Thresholds are Python floats in the compiled program: 1.0 / 0.0 raises there, so it
    # cannot be shipped; coefficients are np.float64, so the same division is +Inf.
    with pytest.raises(EmitError, match="raises ZeroDivisionError in Python"):
        emit(program('return np.where(f["kv_sum"] > 1.0 / 0.0, 1.0, 2.0)'))
    assert "math.Inf(1)" in emit(program('return f["kv_sum"] + 1.0 / 0.0'))


def test_batch_row_computes_features_as_go_does():
    # The same batch as go/features_test.go "mixed, with idle and unclassified requests".
    row = batch_row(FACTS["llama-2-70b tp4"], [(64, 0, 32, 32), (8, 3, 10, 1), (40, 0, 16, 0), (5, 0, 5, 2)])
    assert row["prefill_tokens"] == 32 and row["decode_tokens"] == 1 and row["scheduled_tokens"] == 33
    assert row["num_prefill_reqs"] == 1 and row["num_decode_reqs"] == 1
    assert row["kv_sum"] == 16 * 7 and row["kv_mean"] == 28 and row["kv_max"] == 64 and row["kv_min"] == 7
    assert row["kv_std"] == pytest.approx(np.std([64, 11, 16, 7]), rel=1e-15)
    assert batch_row(FACTS["llama-2-70b tp4"], [])["kv_mean"] == 0.0


# ---- end to end: go vet and go test on generated files --------------------------------------------


def go_module_copy(tmp_path: Path) -> Path:
    """The hand-written Go package without any generated formula or vectors."""
    module = tmp_path / "go"
    shutil.copytree(GO_MODULE, module, ignore=shutil.ignore_patterns("*_formula.go", "testdata"))
    return module


def run_go(module: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os
    return subprocess.run([GO, *args], cwd=module, capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})}, timeout=600)


def ship(module: Path, target: str, text: str) -> None:
    write_go(text, module, target=target, program_path=f"programs/{target}.py", test_mape=0.1)
    rows = edge_case_rows(text, FACTS).rows
    write_vectors(text, rows, module / "testdata" / f"{target}_vectors.json", target=target)


@needs_go
def test_generated_go_matches_numpy_end_to_end(tmp_path):
    module = go_module_copy(tmp_path)
    ship(module, "duration_us", BLACKBOX)
    ship(module, "period_us", NASTY)
    for name, (text, _) in CONSTRUCTS.items():
        ship(module, f"c_{name}", text)

    vet = run_go(module, "vet", "./...")
    assert vet.returncode == 0, vet.stdout + vet.stderr
    test = run_go(module, "test", "-count=1", "-v", "./...")  # every Go test, with formulas present
    assert test.returncode == 0, test.stdout[-20000:] + test.stderr
    assert "--- PASS: TestGeneratedFormulasMatchPython/period_us" in test.stdout
    assert test.stdout.count("--- PASS: TestGeneratedFormulasMatchPython/") == len(CONSTRUCTS) + 2

    # No generated product may be fused into an FMA on the platforms that fuse.
    for goarch, extra in (("arm64", {}), ("amd64", {"GOAMD64": "v3"})):
        build = run_go(module, "build", "-gcflags=-S", ".", env={"GOARCH": goarch, **extra})
        assert build.returncode == 0, build.stderr[-5000:]
        fused = [line for line in build.stderr.splitlines()
                 if re.search(r"\b(FMADD|FMSUB|FNMADD|FNMSUB|VFMADD|VFMSUB|VFNMADD|VFNMSUB)\w*\b", line)]
        assert not fused, f"{goarch}: fused multiply-add in\n" + "\n".join(fused[:10])


@needs_go
def test_go_test_fails_without_vectors_and_on_stale_vectors(tmp_path):
    module = go_module_copy(tmp_path)
    missing = run_go(module, "test", "-count=1", "-run", "TestGeneratedFormulasMatchPython", ".")
    assert missing.returncode != 0 and "no testdata/*_vectors.json" in missing.stdout

    ship(module, "duration_us", BLACKBOX)
    other = program('return f["kv_sum"] * 2.0')
    write_vectors(other, edge_case_rows(other, FACTS).rows, module / "testdata" / "duration_us_vectors.json",
                  target="duration_us")
    stale = run_go(module, "test", "-count=1", "-run", "TestGeneratedFormulasMatchPython", ".")
    assert stale.returncode != 0 and "regenerate both" in stale.stdout
