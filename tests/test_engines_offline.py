"""The offline mutation engine: valid, deterministic, diverse answers through OpenEvolve's own plumbing."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import statistics
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
from openevolve.config import LLMModelConfig, PromptConfig
from openevolve.llm.ensemble import LLMEnsemble
from openevolve.prompt.sampler import PromptSampler
from openevolve.utils.code_utils import enforce_evolve_blocks, parse_full_rewrite

from stepformula.engines.offline import (
    FALLBACK_LINEAR,
    FALLBACK_PERTURB,
    OPERATORS,
    OfflineMutator,
    feature_line,
    feature_scales_line,
    make_offline_mutator,
    op_budget_line,
    parse_feature_line,
    parse_feature_scales_line,
    parse_op_budget_line,
    parse_target_scale_line,
    read_request,
    target_scale_line,
)
from stepformula.features import FEATURES
from stepformula.program import check_program

NAMES = tuple(FEATURES)

LINEAR = '''import numpy as np


def predict(f):
    return 3.0 + 0.02 * f["prefill_tokens"] + 0.5 * f["decode_tokens"]
'''

ROOFLINE = '''"""Roofline seed: the slower of compute and memory time, plus a fixed overhead."""
import numpy as np

# EVOLVE-BLOCK-START
def predict(f):
    # 24 h^2 FLOPs per token per layer (attention + MLP projections)
    flops = 24.0 * f["scheduled_tokens"] * f["hidden_dim"] ** 2 * f["num_layers"]
    compute = flops / f["peak_flops_bf16"]
    weights = 2.0 * f["num_layers"] * f["hidden_dim"] * f["intermediate_dim"]
    memory = (weights + 4.0 * f["kv_sum"] * f["hidden_dim"]) / f["peak_bandwidth"]
    return 1000000.0 * np.maximum(compute, memory) + 50.0
# EVOLVE-BLOCK-END
'''

WHERE_LOCALS = '''import numpy as np


def predict(f):
    """Two regimes: prefill-heavy and decode-only steps."""
    big = f["prefill_tokens"] > 256
    base = 20.0 + 0.01 * f["kv_sum"]
    base = base + 0.3 * f["num_decode_reqs"]
    return np.where(big, base + 0.05 * f["prefill_tokens"], base * 1.2)
'''

# Reads num_experts and active_experts, which none of the parents read.
INSPIRATION = '''import numpy as np


def predict(f):
    moe = f["active_experts"] / f["num_experts"]
    return 10.0 + 0.002 * f["scheduled_tokens"] * moe + np.sqrt(f["kv_mean"])
'''

TOP = '''import numpy as np


def predict(f):
    return 5.0 + 0.01 * f["scheduled_tokens"] + 0.001 * f["kv_sum"]
'''

BIG = '''import numpy as np


def predict(f):
    a = 1.0 + 0.1 * f["prefill_tokens"] + 0.2 * f["decode_tokens"] + 0.3 * f["kv_sum"]
    b = np.log1p(f["kv_mean"]) * f["num_layers"] + np.sqrt(f["hidden_dim"]) * 0.5
    c = np.maximum(a, b) / f["peak_flops_bf16"] + f["num_heads"] * f["num_prefill_reqs"] * 0.01
    return np.where(f["scheduled_tokens"] > 512, a * c, b + c) + 2.0 * a - 0.1 * b
'''

PARENTS = {"linear": LINEAR, "roofline": ROOFLINE, "where_locals": WHERE_LOCALS}


def openevolve_prompt(parent: str, *, system_lines: tuple[str, ...] = (feature_line(NAMES),),
                      top: tuple[str, ...] = (TOP,), inspirations: tuple[str, ...] = (INSPIRATION,)) -> dict[str, str]:
    """A prompt exactly as OpenEvolve 0.4.1 builds it in full-rewrite mode."""
    config = PromptConfig(system_message="You improve a step-time formula.\n" + "\n".join(system_lines))
    sampler = PromptSampler(config)
    return sampler.build_prompt(
        current_program=parent,
        program_metrics={"combined_score": 0.4},
        top_programs=[{"id": f"t{i}", "code": code, "metrics": {"combined_score": 0.5}} for i, code in enumerate(top)],
        inspirations=[{"id": f"i{i}", "code": code, "metrics": {"combined_score": 0.3}, "metadata": {}}
                      for i, code in enumerate(inspirations)],
        language="python",
        diff_based_evolution=False,
    )


def synthetic_features(rows: int = 50) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {name: rng.uniform(1.0, 1000.0, rows) for name in NAMES}


def answer_program(answer: str) -> str:
    return parse_full_rewrite(answer, "python")


# ---- prompt lines --------------------------------------------------------------------------------


def test_prompt_lines_round_trip():
    assert feature_line(["prefill_tokens", "kv_sum"]) == "FEATURES: prefill_tokens, kv_sum"
    assert parse_feature_line("intro\n  FEATURES: a, b ,c\nFEATURE_SCALES: a=1") == ("a", "b", "c")
    assert parse_feature_line("no line here") is None
    assert parse_op_budget_line("x\n" + op_budget_line(12) + "\n") == 12
    assert parse_op_budget_line("OP_BUDGET: many") is None
    scales = {"prefill_tokens": 512.0, "peak_flops_bf16": 9.89e14}
    assert parse_feature_scales_line(feature_scales_line(scales)) == pytest.approx(scales, rel=1e-3)
    assert parse_target_scale_line(target_scale_line(25_000.0)) == pytest.approx(25_000.0)
    with pytest.raises(ValueError):
        feature_line(["bad name"])
    with pytest.raises(ValueError):
        op_budget_line(-1)
    with pytest.raises(ValueError):
        target_scale_line(float("nan"))


def test_read_request_finds_parent_donors_and_lines():
    prompt = openevolve_prompt(ROOFLINE, system_lines=(feature_line(NAMES), op_budget_line(30)))
    request = read_request(prompt["system"], prompt["user"])
    assert request.parent_text == ROOFLINE.rstrip("\n")
    assert request.donor_texts == (TOP.rstrip("\n"), INSPIRATION.rstrip("\n"))  # not the placeholder
    assert request.feature_names == NAMES
    assert request.op_budget == 30


def test_features_fall_back_on_programs_in_the_prompt():
    prompt = openevolve_prompt(LINEAR, system_lines=())
    request = read_request(prompt["system"], prompt["user"])
    assert request.feature_names[:2] == ("prefill_tokens", "decode_tokens")
    assert {"num_experts", "active_experts", "kv_sum"} <= set(request.feature_names)
    answer = OfflineMutator().mutate(prompt["system"], prompt["user"], seed=1)
    check_program(answer_program(answer), request.feature_names)


# ---- determinism and diversity -------------------------------------------------------------------


def test_same_prompt_and_seed_give_the_same_answer():
    prompt = openevolve_prompt(WHERE_LOCALS)
    for seed in range(20):
        first = OfflineMutator().mutate(prompt["system"], prompt["user"], seed)
        second = OfflineMutator().mutate(prompt["system"], prompt["user"], seed)
        assert first == second


def test_different_seeds_give_different_answers():
    prompt = openevolve_prompt(ROOFLINE)
    mutator = OfflineMutator()
    answers = {mutator.mutate(prompt["system"], prompt["user"], seed) for seed in range(50)}
    assert len(answers) >= 20


def test_answers_do_not_depend_on_the_hash_seed():
    script = (
        "import json, sys\n"
        "sys.path[:0] = [p for p in sys.argv[1:]]\n"
        "from test_engines_offline import openevolve_prompt, WHERE_LOCALS\n"
        "from stepformula.engines.offline import OfflineMutator\n"
        "p = openevolve_prompt(WHERE_LOCALS)\n"
        "m = OfflineMutator()\n"
        "print(json.dumps([m.mutate(p['system'], p['user'], s) for s in range(25)]))\n"
    )
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", script, os.path.dirname(__file__)],
                              env=env, capture_output=True, text=True, check=True)
        outputs.append(json.loads(done.stdout))
    assert outputs[0] == outputs[1]


# ---- validity ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def answers_by_parent() -> dict[str, list[tuple[str, str]]]:
    """(answer, operator) for 300 seeds on each realistic parent."""
    mutator = OfflineMutator()
    result = {}
    for name, parent in PARENTS.items():
        prompt = openevolve_prompt(parent)
        result[name] = []
        for seed in range(300):
            answer = mutator.mutate(prompt["system"], prompt["user"], seed)
            result[name].append((answer, mutator.last_operator))
    return result


@pytest.mark.parametrize("name", list(PARENTS))
def test_every_answer_is_a_valid_finite_new_program(answers_by_parent, name):
    features = synthetic_features()
    parent = PARENTS[name]
    for answer, _ in answers_by_parent[name]:
        program = answer_program(answer)
        assert program != parent.strip()  # OpenEvolve rejects a rewrite identical to the parent
        checked = check_program(program, NAMES)
        with np.errstate(all="ignore"):
            output = np.broadcast_to(checked.compile()(features), (50,))
        assert np.all(np.isfinite(output)), program


def test_every_operator_is_exercised(answers_by_parent):
    used = Counter(op for answers in answers_by_parent.values() for _, op in answers)
    assert set(OPERATORS) <= set(used), used
    fallbacks = used[FALLBACK_PERTURB] + used[FALLBACK_LINEAR]
    assert fallbacks <= 0.02 * sum(used.values()), used


def test_comments_docstring_import_and_markers_are_kept(answers_by_parent):
    for answer, _ in answers_by_parent["roofline"]:
        program = answer_program(answer)
        assert program.startswith('"""Roofline seed')
        assert "import numpy as np\n\n# EVOLVE-BLOCK-START\ndef predict(f):" in program
        assert program.endswith("# EVOLVE-BLOCK-END")
        # Nothing outside the evolve block changed: OpenEvolve's enforcement is a no-op.
        assert enforce_evolve_blocks(ROOFLINE.strip(), program) == program


def test_markers_inside_the_function_stay_around_the_body():
    parent = '''import numpy as np


def predict(f):
    # EVOLVE-BLOCK-START
    x = 2.0 * f["prefill_tokens"]
    return x + 0.5 * f["decode_tokens"]
    # EVOLVE-BLOCK-END
'''
    prompt = openevolve_prompt(parent)
    mutator = OfflineMutator()
    for seed in range(40):
        program = answer_program(mutator.mutate(prompt["system"], prompt["user"], seed))
        check_program(program, NAMES)
        assert program.startswith("import numpy as np\n\n\ndef predict(f):\n    # EVOLVE-BLOCK-START\n")
        assert program.endswith("    # EVOLVE-BLOCK-END")
        assert check_program(enforce_evolve_blocks(parent.strip(), program), NAMES)


def test_crossover_grafts_material_from_an_inspiration(answers_by_parent):
    crossed = [answer_program(a) for answers in answers_by_parent.values() for a, op in answers if op == "crossover"]
    assert crossed
    from_inspiration = [p for p in crossed if "num_experts" in p or "kv_mean" in p]
    assert len(from_inspiration) >= 5


def test_crossover_inlines_the_donor_locals():
    # With no other way to reach them, the donor's features can only arrive through crossover.
    prompt = openevolve_prompt(LINEAR, top=(), system_lines=(feature_line(NAMES),))
    mutator = OfflineMutator()
    grafted = []
    for seed in range(200):
        answer = mutator.mutate(prompt["system"], prompt["user"], seed)
        if mutator.last_operator == "crossover":
            grafted.append(answer_program(answer))
    assert any("f['active_experts'] / f['num_experts']" in p for p in grafted)
    assert all("moe" not in p for p in grafted)


# ---- budget and scales ---------------------------------------------------------------------------


def test_a_parent_over_budget_does_not_grow():
    big_ops = check_program(BIG, NAMES).num_operations
    prompt = openevolve_prompt(BIG, system_lines=(feature_line(NAMES), op_budget_line(5)))
    mutator = OfflineMutator()
    counts = Counter()
    for seed in range(200):
        answer = mutator.mutate(prompt["system"], prompt["user"], seed)
        ops = check_program(answer_program(answer), NAMES).num_operations
        counts["grew" if ops > big_ops else "shrank" if ops < big_ops else "same"] += 1
    assert counts["grew"] == 0, counts
    assert counts["shrank"] >= 100, counts


def test_without_a_budget_programs_also_grow():
    parent_ops = check_program(LINEAR, NAMES).num_operations
    prompt = openevolve_prompt(LINEAR)
    mutator = OfflineMutator()
    grown = sum(check_program(answer_program(mutator.mutate(prompt["system"], prompt["user"], s)), NAMES)
                .num_operations > parent_ops for s in range(100))
    assert grown >= 30


def test_new_terms_start_at_a_tenth_of_the_typical_output():
    scales = {name: 100.0 for name in NAMES}
    lines = (feature_line(NAMES), feature_scales_line(scales), target_scale_line(2000.0))
    prompt = openevolve_prompt(LINEAR, system_lines=lines)
    mutator = OfflineMutator()
    coefficients = set()
    for seed in range(100):
        mutator.mutate(prompt["system"], prompt["user"], seed)
        description = mutator.last_description
        if mutator.last_operator == "add_term" and description.count("f[") == 1:
            coefficients.add(description.split("+ ")[1].split(" *")[0])
    assert coefficients == {"2.0"}  # 0.1 * 2000 / 100


# ---- fallbacks -----------------------------------------------------------------------------------


def test_fallback_perturbs_one_constant_of_the_parent():
    prompt = openevolve_prompt(LINEAR)
    mutator = OfflineMutator(max_attempts=0)
    program = answer_program(mutator.mutate(prompt["system"], prompt["user"], seed=3))
    assert mutator.last_operator == FALLBACK_PERTURB
    checked = check_program(program, NAMES)
    parent_values = sorted(check_program(LINEAR, NAMES).fittable_values)
    assert len(set(checked.fittable_values) - set(parent_values)) == 1


@pytest.mark.parametrize("parent", [
    'def predict(f):\n    return f["not_a_feature"] * 2.0\n',  # unknown feature
    "def predict(f):\n    import os\n    return 1.0\n",  # outside the language
    None,  # no program at all
])
def test_fallback_to_a_linear_model_when_the_parent_is_unusable(parent):
    if parent is None:
        system, user = feature_line(NAMES), "Write a formula.\n"
    else:
        prompt = openevolve_prompt(parent)
        system, user = prompt["system"], prompt["user"]
    mutator = OfflineMutator()
    checked = check_program(answer_program(mutator.mutate(system, user, seed=0)), NAMES)
    assert mutator.last_operator == FALLBACK_LINEAR
    assert len(checked.features_used) == 3


# ---- OpenEvolve plumbing -------------------------------------------------------------------------


def test_factory_pickles_and_the_ensemble_answers_with_a_valid_program():
    assert pickle.loads(pickle.dumps(make_offline_mutator)) is make_offline_mutator
    prompt = openevolve_prompt(WHERE_LOCALS)

    def ask(iteration: int) -> str:
        config = LLMModelConfig(name="offline", init_client=make_offline_mutator, random_seed=42)
        ensemble = LLMEnsemble([config])
        ensemble.reseed(iteration)  # as OpenEvolve's worker does: a per-iteration seed kwarg follows
        return asyncio.run(ensemble.generate_with_context(
            system_message=prompt["system"], messages=[{"role": "user", "content": prompt["user"]}]))

    answer = ask(5)
    check_program(answer_program(answer), NAMES)
    assert ask(5) == answer
    assert len({ask(i) for i in range(10)}) >= 5


def test_interface_attributes_and_plain_generate():
    mutator = make_offline_mutator(LLMModelConfig(name="offline"))
    assert mutator.model == "offline"
    prompt = openevolve_prompt(LINEAR)
    answer = asyncio.run(mutator.generate(prompt["system"] + "\n" + prompt["user"], seed=9))
    check_program(answer_program(answer), NAMES)
    assert mutator.last_usage == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert mutator.last_operator in OPERATORS


def test_a_mutation_is_fast():
    prompt = openevolve_prompt(ROOFLINE, top=(TOP, WHERE_LOCALS, BIG))
    mutator = OfflineMutator()
    durations = []
    for seed in range(100):
        start = time.perf_counter()
        mutator.mutate(prompt["system"], prompt["user"], seed)
        durations.append(time.perf_counter() - start)
    assert statistics.median(durations) < 0.005
