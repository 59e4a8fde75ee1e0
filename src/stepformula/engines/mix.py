"""The engine mix of a run: OpenEvolve LLM model configs from `evolve.engine` weights.

`offline` is the symbolic mutator (engines/offline.py), `openai` any OpenAI-compatible server
(`evolve.openai`: base_url, model, api_key_env, ...), `local` the embedded model served on
loopback by the stage (engines/local.py) and reached through the same OpenAI-compatible path.
OpenEvolve samples one model per iteration by weight, seeded per iteration.
"""

from __future__ import annotations

from .offline import make_offline_mutator
from .openai_compat import openevolve_model_config, to_llm_model_config

OFFLINE_MODEL = "offline-symbolic"
_CLIENT_KEYS = ("temperature", "top_p", "max_tokens", "timeout", "retries", "retry_delay")


def model_configs(engines: dict[str, float], openai: dict, local: dict,
                  local_base_url: str | None = None, local_model: str | None = None):
    """(LLMModelConfig list, model names) for the engines with a positive weight, in a fixed order."""
    from openevolve.config import LLMModelConfig

    configs, names = [], []
    for engine in ("offline", "openai", "local"):
        weight = engines.get(engine, 0.0)
        if weight <= 0:
            continue
        if engine == "offline":
            configs.append(LLMModelConfig(name=OFFLINE_MODEL, init_client=make_offline_mutator,
                                          weight=weight))
            names.append(OFFLINE_MODEL)
            continue
        options = openai if engine == "openai" else local
        client = {k: options[k] for k in _CLIENT_KEYS if k in options}
        if engine == "openai":
            entry = openevolve_model_config(options.get("base_url", ""), options.get("model", ""),
                                            options.get("api_key_env"), weight=weight, **client)
        else:
            entry = openevolve_model_config(local_base_url, local_model, None, weight=weight,
                                            **client)
        configs.append(to_llm_model_config(entry))
        names.append(f"{engine}:{entry['name']}")
    return configs, names
