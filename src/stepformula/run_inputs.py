"""What one evolution run starts from, built from params.yaml and the pipeline's files: the
train rows, the evaluator settings, the three seeds and the system prompt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import section
from .evaluator import EvaluatorSettings, TrainingData, load_training_data
from .features import available_features
from .io import read_json
from .prompts import system_message, typical_scales
from .seeds import seed_programs


@dataclass(frozen=True)
class RunInputs:
    """Everything run_evolution needs besides the engines and where to checkpoint."""
    evaluator_settings: EvaluatorSettings
    feature_names: list[str]
    train_path: Path
    train: TrainingData
    seeds: dict[str, str]
    system_message: str


def run_inputs(params: dict, target: str, run_seed: int) -> RunInputs:
    """Read the manifest and the train split of `target`; build seeds and prompt for `run_seed`."""
    evaluator_settings = EvaluatorSettings.from_params(params, target)
    manifest = read_json("data/feature_manifest.json")
    names = available_features(manifest)
    train_path = Path(f"data/split/train/{target}.parquet")
    train = load_training_data(train_path, target, names,
                               decode_below=evaluator_settings.decode_below,
                               prefill_at_least=evaluator_settings.prefill_at_least)
    description = next(t["derivation"] for t in manifest["targets"] if t["name"] == target)
    prompt = system_message(target, description, manifest,
                            int(section(params, "select")["max_operations"]),
                            evaluator_settings.lam, *typical_scales(train.features, train.target))
    return RunInputs(evaluator_settings, names, train_path, train,
                     seed_programs(train.features, train.target, names, run_seed), prompt)
