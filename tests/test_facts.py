"""data/models.yaml: the shipped facts load with the right numbers; every broken facts file is
refused with an InputError that names the file and what is wrong."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from otlp import blis_rows  # noqa: E402

from stepformula import features, traces  # noqa: E402
from stepformula.errors import InputError  # noqa: E402
from stepformula.facts import MODEL_FACTS, load_facts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FACTS = REPO / "data" / "models.yaml"
HARDWARE = "H100-SXM-80GB"


@pytest.fixture()
def document() -> dict:
    return yaml.safe_load(FACTS.read_text(encoding="utf-8"))


def write(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def expect_error(path: Path, hardware: str, *words: str) -> InputError:
    with pytest.raises(InputError) as info:
        load_facts(path, hardware)
    message = str(info.value)
    assert str(path) in message, message
    for word in words:
        assert word in info.value.problem, (word, info.value.problem)
    return info.value


def test_shipped_facts_load():
    facts = load_facts(FACTS, HARDWARE)
    assert {"llama-2-70b", "llama-2-70b-hf", "codellama-34b"} <= set(facts.models)
    llama = facts.model("llama-2-70b")
    assert (llama.hidden_dim, llama.num_layers, llama.num_heads, llama.num_kv_heads,
            llama.intermediate_dim, llama.tp) == (8192, 80, 64, 8, 28672, 4)
    code = facts.model("codellama-34b")
    assert (code.num_layers, code.intermediate_dim, code.tp) == (48, 22016, 2)
    mixtral = facts.model("mixtral-8x7b")
    assert (mixtral.num_experts, mixtral.active_experts) == (8, 2)
    # `989.5e12` is a string to YAML 1.1; it must still arrive as the number
    assert facts.hardware.peak_flops_bf16 == 989.5e12
    assert facts.hardware.peak_bandwidth == 3.35e12
    assert isinstance(facts.hardware.peak_flops_bf16, float)
    # every experiment of the shipped data has its model, with the experiment's TP
    for experiment in ("20260217-202857-llama-2-70b-tp4-general",
                       "20260217-203421-llama-2-70b-hf-tp4-codegen",
                       "20260218-150304-codellama-34b-tp2-general"):
        identity = traces.experiment_identity(experiment, FACTS)
        assert facts.model(identity["model"]).tp == identity["tp"]


def test_unknown_model_in_step_table_names_facts_file_and_model(tmp_path):
    experiment = "20260101-000000-gpt-9-tp4-general"
    table = blis_rows(experiment, 12)
    assert set(table["model"]) == {"gpt-9"}
    path = tmp_path / "steps.parquet"
    table.to_parquet(path, index=False)
    steps = traces.read_steps(path)
    facts = load_facts(FACTS, HARDWARE)
    with pytest.raises(InputError) as info:
        features.build_features(steps, facts, 16)
    assert info.value.source == str(FACTS)
    assert "'gpt-9'" in info.value.problem and "unknown model" in info.value.problem


@pytest.mark.parametrize("fact", MODEL_FACTS)
def test_missing_fact(tmp_path, document, fact):
    del document["models"]["codellama-34b"][fact]
    path = write(tmp_path, document)
    expect_error(path, HARDWARE, "models.codellama-34b", fact)


@pytest.mark.parametrize("value", [0, -4096, "wide", True, None])
def test_non_positive_or_non_numeric_fact(tmp_path, document, value):
    document["models"]["llama-2-70b"]["hidden_dim"] = value
    path = write(tmp_path, document)
    expect_error(path, HARDWARE, "models.llama-2-70b.hidden_dim", "positive number")


@pytest.mark.parametrize("value", [0, -1.0, "fast"])
def test_non_positive_hardware_fact(tmp_path, document, value):
    document["hardware"][HARDWARE]["peak_bandwidth"] = value
    path = write(tmp_path, document)
    expect_error(path, HARDWARE, f"hardware.{HARDWARE}.peak_bandwidth", "positive number")


def test_missing_hardware_fact(tmp_path, document):
    del document["hardware"][HARDWARE]["peak_flops_bf16"]
    path = write(tmp_path, document)
    expect_error(path, HARDWARE, "peak_flops_bf16")


def test_more_active_than_total_experts(tmp_path, document):
    document["models"]["mixtral-8x7b"]["active_experts"] = 9
    path = write(tmp_path, document)
    expect_error(path, HARDWARE, "mixtral-8x7b", "active_experts > num_experts")


def test_unknown_hardware(tmp_path):
    expect_error(FACTS, "A100-SXM-40GB", "'A100-SXM-40GB'", "hardware")


def test_no_hardware_section(tmp_path, document):
    del document["hardware"]
    path = write(tmp_path, document)
    expect_error(path, HARDWARE, HARDWARE)


def test_invalid_yaml(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  llama-2-70b: {hidden_dim: 8192, num_layers: [80\n",
                    encoding="utf-8")
    expect_error(path, HARDWARE, "not valid YAML")


@pytest.mark.parametrize("text", ["just a string\n", "models: [a, b]\n", "hardware: {}\n"])
def test_no_models_mapping(tmp_path, text):
    path = tmp_path / "models.yaml"
    path.write_text(text, encoding="utf-8")
    expect_error(path, HARDWARE, "models")


def test_missing_facts_file(tmp_path):
    expect_error(tmp_path / "absent.yaml", HARDWARE, "does not exist")
