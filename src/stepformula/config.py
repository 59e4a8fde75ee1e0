"""params.yaml, read by each stage for its own section."""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import InputError

PARAMS = Path("params.yaml")


def load_params(path: str | Path = PARAMS) -> dict:
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "not found: run stages from the repository root") from None
    if not isinstance(params, dict):
        raise InputError(path, "must be a mapping of sections")
    return params


def section(params: dict, name: str) -> dict:
    """One section, which must exist and be a mapping."""
    value = params.get(name)
    if not isinstance(value, dict):
        raise InputError(f"params.yaml {name}", "section is missing or not a mapping")
    return value
