"""Architecture and hardware facts (data/models.yaml), validated.

Every model an experiment names must be in the file; every fact a feature needs must be a
positive number. A wrong or missing fact would silently shift every roofline estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import InputError

MODEL_FACTS = ("hidden_dim", "num_layers", "num_heads", "num_kv_heads", "intermediate_dim",
               "num_experts", "active_experts", "vocab_size", "tp")
HARDWARE_FACTS = ("peak_flops_bf16", "peak_bandwidth")


@dataclass(frozen=True)
class ModelFacts:
    """A model's architecture, as published in its configuration, and its serving TP degree."""
    name: str
    hidden_dim: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_dim: int
    num_experts: int
    active_experts: int
    vocab_size: int
    tp: int


@dataclass(frozen=True)
class Hardware:
    """One GPU's peak dense BF16 FLOP/s and HBM bytes/s (datasheet figures)."""
    name: str
    peak_flops_bf16: float
    peak_bandwidth: float


@dataclass(frozen=True)
class Facts:
    """The facts file: models by name, and the GPU the experiments ran on."""
    models: dict[str, ModelFacts]
    hardware: Hardware
    source: str

    def model(self, name: str) -> ModelFacts:
        if name not in self.models:
            raise InputError(self.source, f"unknown model {name!r}: not among "
                                          f"{', '.join(sorted(self.models))}")
        return self.models[name]


def _positive(value: object, where: str, source: Path) -> float:
    # PyYAML follows YAML 1.1, which reads `989.5e12` (no exponent sign) as a string.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InputError(source, f"{where} must be a positive number, got {value!r}")
    return value


def load_facts(path: str | Path, hardware: str) -> Facts:
    """Read and check the facts file; `hardware` names the GPU of the experiments."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "facts file does not exist") from None
    except yaml.YAMLError as exc:
        raise InputError(path, f"is not valid YAML: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("models"), dict):
        raise InputError(path, "must have a `models:` mapping")
    models = {}
    for name, entry in document["models"].items():
        if not isinstance(entry, dict):
            raise InputError(path, f"models.{name} must be a mapping")
        missing = [k for k in MODEL_FACTS if k not in entry]
        if missing:
            raise InputError(path, f"models.{name} lacks {', '.join(missing)}")
        values = {k: _positive(entry[k], f"models.{name}.{k}", path) for k in MODEL_FACTS}
        if values["active_experts"] > values["num_experts"]:
            raise InputError(path, f"models.{name}: active_experts > num_experts")
        models[name] = ModelFacts(name=name, **{k: int(v) for k, v in values.items()})
    gpus = document.get("hardware")
    if not isinstance(gpus, dict) or hardware not in gpus:
        raise InputError(path, f"hardware {hardware!r} is not in the `hardware:` mapping")
    entry = gpus[hardware]
    missing = [k for k in HARDWARE_FACTS if not isinstance(entry, dict) or k not in entry]
    if missing:
        raise InputError(path, f"hardware.{hardware} lacks {', '.join(missing)}")
    hw = Hardware(hardware, *(float(_positive(entry[k], f"hardware.{hardware}.{k}", path))
                              for k in HARDWARE_FACTS))
    return Facts(models=models, hardware=hw, source=str(path))
