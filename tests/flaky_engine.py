"""A mutation engine that fails on chosen iterations, for tests/test_evolution.py.

`make_flaky_engine` is OpenEvolve's `init_client` (a module-level function, so it also pickles
for spawned workers). The engine counts its calls: OpenEvolve runs one worker that takes the
iterations in order, so call k of a fresh run is iteration k. The plan (iteration -> failure)
comes from $FLAKY_ENGINE_PLAN as JSON, e.g. {"3": "timeout", "5": "http_500"}:

    timeout       raise TimeoutError() without a message, as asyncio.wait_for does when
                  OpenEvolve's OpenAI client runs out of time
    http_500      raise an error worded as the openai SDK words an HTTP 500
    empty         answer "" (no code at all)
    prose         answer a sentence with no code block
    (otherwise)   delegate to the offline symbolic mutator

Run as a script (`python -m flaky_engine <target> <seed> <out_dir>`, cwd = a project copy, with
the DETERMINISTIC_ENV variables set) it runs stepformula.evolution.run_evolution with this
engine the way stages/evolve.py does, and writes the run outputs to <out_dir>.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from openevolve.llm.base import LLMInterface

from stepformula.engines.offline import OfflineMutator

PLAN_ENV_VAR = "FLAKY_ENGINE_PLAN"
MODEL_NAME = "flaky-offline"


class HTTPStatusError(Exception):
    """Stands in for openai.InternalServerError (same wording, no HTTP objects needed)."""


class FlakyEngine(LLMInterface):
    def __init__(self, model: str, plan: dict[int, str], random_seed: int | None = None):
        self.model = model
        self.plan = plan
        self.calls = 0
        self.offline = OfflineMutator(model, random_seed=random_seed)
        self.last_usage = dict(self.offline.last_usage)

    async def generate(self, prompt: str, **kwargs: Any) -> str:
        return await self.generate_with_context("", [{"role": "user", "content": prompt}], **kwargs)

    async def generate_with_context(self, system_message: str, messages: list[dict[str, str]],
                                    **kwargs: Any) -> str:
        self.calls += 1
        failure = self.plan.get(self.calls)
        if failure == "timeout":
            raise TimeoutError()
        if failure == "http_500":
            raise HTTPStatusError("Error code: 500 - {'error': {'message': 'internal server error', "
                                  "'type': 'server_error'}}")
        if failure == "empty":
            return ""
        if failure == "prose":
            return "I looked at the program carefully and I would keep it as it is."
        answer = await self.offline.generate_with_context(system_message, messages, **kwargs)
        self.last_usage = dict(self.offline.last_usage)
        return answer


def make_flaky_engine(model_cfg: Any) -> FlakyEngine:
    plan = {int(k): str(v) for k, v in json.loads(os.environ.get(PLAN_ENV_VAR, "{}")).items()}
    return FlakyEngine(getattr(model_cfg, "name", None) or MODEL_NAME, plan,
                       random_seed=getattr(model_cfg, "random_seed", None))


def main(target: str, run_seed: int, out_dir: str) -> None:
    """run_evolution with this engine, arguments built as stages/evolve.py builds them."""
    run_seed = int(run_seed)
    from openevolve.config import LLMModelConfig

    from stepformula.config import load_params, section
    from stepformula.evolution import EvolveSettings, finish, run_evolution
    from stepformula.run_inputs import run_inputs
    from stepformula.run_outputs import write_run_outputs

    params = load_params()
    settings = EvolveSettings.from_params(section(params, "evolve"))
    inputs = run_inputs(params, target, run_seed)
    checkpoint_root = Path("checkpoints") / target / f"flaky{run_seed}"
    result = run_evolution(
        target=target, run_seed=run_seed, settings=settings,
        evaluator_settings=inputs.evaluator_settings, train_path=inputs.train_path,
        feature_names=inputs.feature_names, system_message=inputs.system_message,
        seeds=inputs.seeds, checkpoint_root=checkpoint_root,
        models=[LLMModelConfig(name=MODEL_NAME, init_client=make_flaky_engine)],
        model_names=[MODEL_NAME], label=f"{target} flaky {run_seed}")
    write_run_outputs(Path(out_dir), result=result, target=target, run_seed=run_seed,
                      settings=settings, evaluator_settings=inputs.evaluator_settings,
                      train=inputs.train,
                      engines={"flaky": 1.0})
    finish(checkpoint_root)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
