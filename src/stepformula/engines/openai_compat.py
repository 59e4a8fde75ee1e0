"""The `openai` engine: any OpenAI-compatible chat server, as OpenEvolve's model config.

OpenEvolve 0.4.1 talks to every configured model through `openevolve.llm.openai.OpenAILLM`,
which builds an `openai.AsyncOpenAI(api_key, base_url, timeout, max_retries=retries)` client
from one `LLMModelConfig` and calls `/chat/completions`. So pointing OpenEvolve at a server is
only a matter of filling that config; the `local` engine uses this same function with the
base URL of the server it started.

The API key: the config carries the *reference* `${VAR}`, never the value. OpenEvolve resolves
it in `LLMModelConfig.__post_init__` when the config object is built (in the main process and
again in each worker, which inherit the environment), so a dict returned here can be logged or
written to a params file without leaking the key. A resolved `LLMModelConfig`/`Config` object
does hold the key in memory: never dump one (`Config.to_yaml`) to a file.
"""

from __future__ import annotations

import os
import re
from typing import Any

from stepformula.errors import InputError

# OpenAI's client refuses an empty key; a keyless server (the local one) ignores whatever is sent.
PLACEHOLDER_API_KEY = "no-key-needed"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def api_key_reference(api_key_env: str) -> str:
    """Return OpenEvolve's `${VAR}` reference for the key variable, after checking it is set.

    Checked here, not left to OpenEvolve, so a missing key fails before any server starts, and
    with a message that names the variable and the parameter that chose it.
    """
    if not isinstance(api_key_env, str) or not _ENV_NAME.match(api_key_env):
        raise InputError("api_key_env", f"{api_key_env!r} is not an environment variable name")
    if not os.environ.get(api_key_env):
        raise InputError(
            api_key_env,
            "environment variable is not set (or empty): export it with the API key of the "
            "OpenAI-compatible server; the key itself is never written to params or logs",
        )
    return "${" + api_key_env + "}"


def openevolve_model_config(
    base_url: str,
    model: str,
    api_key_env: str | None,
    *,
    temperature: float = 0.7,
    top_p: float | None = None,
    max_tokens: int = 1024,
    timeout: int = 120,
    retries: int = 1,
    retry_delay: int = 2,
    weight: float = 1.0,
    random_seed: int | None = None,
) -> dict[str, Any]:
    """One entry for OpenEvolve's `llm.models` list: `LLMModelConfig(**returned_dict)`.

    `api_key_env` names the environment variable that holds the key; None means the server needs
    no key (the local engine), and a placeholder is sent because the openai client demands one.

    `retries` is used twice by OpenEvolve (its own retry loop around a client that is built
    with `max_retries=retries`), so up to (retries + 1) ** 2 requests per call: keep it small.
    `timeout` bounds one attempt in seconds; a 1.5B model on 2 busy cores can need minutes for
    1,000 tokens, so the local engine passes a larger one.
    """
    if not base_url or not base_url.startswith(("http://", "https://")):
        raise InputError("base_url", f"{base_url!r} is not an http(s) URL")
    if not model:
        raise InputError("model", "the model name is empty")
    if max_tokens <= 0:
        raise InputError("max_tokens", f"must be positive, got {max_tokens}")
    if timeout <= 0:
        raise InputError("timeout", f"must be positive, got {timeout}")
    if retries < 0:
        raise InputError("retries", f"must be >= 0, got {retries}")
    api_key = PLACEHOLDER_API_KEY if api_key_env is None else api_key_reference(api_key_env)
    return {
        # Explicit, so a top-level `llm.provider` (e.g. a CLI agent) cannot reroute this model.
        "provider": "openai",
        "api_base": base_url.rstrip("/"),
        "api_key": api_key,
        "name": model,
        "weight": weight,
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": max_tokens,
        "timeout": timeout,
        "retries": retries,
        "retry_delay": retry_delay,
        "random_seed": random_seed,
    }


def to_llm_model_config(model_config: dict[str, Any]):
    """Build OpenEvolve's `LLMModelConfig` from `openevolve_model_config(...)` (resolves the key)."""
    from openevolve.config import LLMModelConfig

    return LLMModelConfig(**model_config)
