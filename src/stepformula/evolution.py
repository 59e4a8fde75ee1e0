"""One evolution run: OpenEvolve's MAP-Elites search from the three seeds, on train only.

OpenEvolve does the search (database, islands, MAP-Elites archive, checkpoints, prompts); this
module only configures it and plugs in what is ours:

* the evaluator (stepformula.evaluator through openevolve_entry.py), with two MAP-Elites
  dimensions: `op_bin` (num_operations in fixed bins) and `error_regime` (3 regimes). OpenEvolve
  bins a custom dimension by a running min/max, so cells would drift as the range grows; the
  feature statistics are pinned at start to [-0.5, bins - 0.5], which makes an integer value v
  land in cell v for the whole run;
* the seeds: (a) is OpenEvolve's initial program, (b) and (c) start islands 1 and 2 through
  `database.island_initial_programs`, which OpenEvolve adds once, and not on resume;
* the mutation engines (engines.py), as OpenEvolve LLM models, mixable with weights;
* the journal (journal.py) as OpenEvolve's evolution tracer: the history and the progress line;
* determinism: with one worker, PYTHONHASHSEED fixed by the stage and uuid4 replaced by a seeded
  generator in the main process and in the worker, a run is a function of its params.

Resume: checkpoints go to a folder outside git. A run that finds an unfinished checkpoint of the
same configuration resumes from the latest one; a finished run deletes its checkpoints, so a
forced rerun starts fresh (OpenEvolve does not checkpoint RNG state: a resumed run is a valid
run, but not bit-identical to an uninterrupted one).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .evaluator import AdapterConfig, EvaluatorSettings, configure
from .journal import RunJournal, read_journal
from .seeds import SEED_NAMES

ENTRY_FILE = Path(__file__).with_name("openevolve_entry.py")
OP_BINS_ENV_VAR = "STEPFORMULA_OP_BIN_EDGES"
from .determinism import DETERMINISTIC_ENV  # noqa: E402  (re-exported for the stage)
REGIME_BINS = 3


@dataclass(frozen=True)
class EvolveSettings:
    """The `evolve:` section of params.yaml, checked."""
    generations: int
    population: int
    seeds: tuple[int, ...]
    islands: int
    archive_size: int
    population_size: int
    migration_interval: int
    checkpoint_interval: int
    op_bin_edges: tuple[int, ...]
    engines: dict[str, float]
    openai: dict = field(default_factory=dict)
    local: dict = field(default_factory=dict)
    max_code_length: int = 20000
    progress_every: int = 100
    # A budget in iterations that replaces generations x population (the arms comparison runs
    # every engine for the same small number of iterations); None for the evolve stage.
    iterations_override: int | None = None

    @property
    def iterations(self) -> int:
        if self.iterations_override is not None:
            return self.iterations_override
        return self.generations * self.population

    @classmethod
    def from_params(cls, section: dict) -> EvolveSettings:
        where = "params.yaml evolve"
        try:
            settings = cls(
                generations=int(section["generations"]), population=int(section["population"]),
                seeds=tuple(int(s) for s in section["seeds"]), islands=int(section["islands"]),
                archive_size=int(section["archive_size"]),
                population_size=int(section["population_size"]),
                migration_interval=int(section["migration_interval"]),
                checkpoint_interval=int(section["checkpoint_interval"]),
                op_bin_edges=tuple(int(e) for e in section["op_bin_edges"]),
                engines={str(k): float(v) for k, v in section["engine"].items()},
                openai=dict(section.get("openai", {})), local=dict(section.get("local", {})),
                max_code_length=int(section.get("max_code_length", 20000)),
                progress_every=int(section.get("progress_every", 100)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(where, f"missing or bad setting: {exc}") from None
        if settings.generations < 1 or settings.population < 1:
            raise InputError(where, "generations and population must be >= 1")
        if settings.islands < len(SEED_NAMES):
            raise InputError(where, f"islands must be >= {len(SEED_NAMES)}: each seed starts one")
        if list(settings.op_bin_edges) != sorted(set(settings.op_bin_edges)):
            raise InputError(where, "op_bin_edges must be strictly increasing")
        unknown = set(settings.engines) - {"offline", "openai", "local"}
        if unknown or not settings.engines or min(settings.engines.values()) < 0 \
                or sum(settings.engines.values()) <= 0:
            raise InputError(where, "engine must map offline/openai/local to weights >= 0 with a "
                                    f"positive sum, got {section.get('engine')!r}")
        return settings


def op_bin(num_operations: float, edges: tuple[int, ...]) -> int:
    """Cell index of an op count: edges (4, 8, ...) give cells [0,4), [4,8), ..., [last, inf)."""
    return int(np.searchsorted(np.asarray(edges), num_operations, side="right"))


class SeededIds:
    """uuid4 replaced by a seeded generator, so program ids (and the set orders that depend on
    them) repeat from run to run. A salt per process role keeps main and worker ids apart."""

    def __init__(self, salt: str):
        self.rng = random.Random(salt)

    def __call__(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)


def _seeded_worker_init(salt: str, original_init):
    """OpenEvolve's worker initializer, preceded by seeding the worker process: uuid4, and the
    global `random`, which Python reseeds from the OS in every forked child (the prompt sampler
    draws its diverse programs from it)."""
    def init(*args, **kwargs):
        uuid.uuid4 = SeededIds(salt)
        random.seed(salt)
        np.random.seed(int(hashlib.sha256(salt.encode()).hexdigest()[:8], 16))
        _name_silent_engine_errors()
        return original_init(*args, **kwargs)
    return init


def _name_silent_engine_errors() -> None:
    """OpenEvolve reports an engine failure by its message alone ("LLM generation failed: <msg>"),
    and a timeout (asyncio.wait_for in OpenEvolve's OpenAI client) has an empty message, which
    journal.failure_class could only count as "other". An engine error without a message is
    re-raised under its type name ("TimeoutError"). Runs in the worker, where engines are called."""
    from openevolve.llm.ensemble import LLMEnsemble

    original = LLMEnsemble.generate_with_context
    if getattr(original, "_names_silent_errors", False):
        return

    async def generate_with_context(self, *args, **kwargs):
        try:
            return await original(self, *args, **kwargs)
        except Exception as exc:
            if str(exc).strip():
                raise
            raise RuntimeError(type(exc).__name__) from exc

    generate_with_context._names_silent_errors = True
    LLMEnsemble.generate_with_context = generate_with_context


def fingerprint(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def latest_checkpoint(checkpoint_root: Path) -> tuple[Path, int] | None:
    found = []
    for path in (checkpoint_root / "checkpoints").glob("checkpoint_*"):
        # OpenEvolve writes metadata.json last but not atomically: a run killed while writing it
        # leaves a torn file, and resuming from it would fail on every later invocation.
        try:
            json.loads((path / "metadata.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        found.append((int(path.name.split("_")[1]), path))
    if not found:
        return None
    iteration, path = max(found)
    return path, iteration


@dataclass
class RunResult:
    """What a finished run leaves: its database, the journal records and the engine counters."""
    database: object
    records: list[dict]
    wall_seconds: float
    resumed_from: int | None
    model_names: list[str]


class _Progress:
    """One terminal line every N iterations: iteration, best MAPE, its ops, rate and ETA."""

    def __init__(self, total: int, every: int, label: str, start_iteration: int):
        self.total, self.every, self.label = total, max(1, every), label
        self.best_score, self.best = -float("inf"), None
        self.started, self.start_iteration = time.time(), start_iteration

    def __call__(self, record: dict) -> None:
        metrics = record.get("metrics") or {}
        score = metrics.get("combined_score")
        if score is not None and score > self.best_score:
            self.best_score, self.best = score, metrics
        iteration = record.get("iteration", 0)
        if iteration and (iteration % self.every == 0 or iteration == self.total):
            done = iteration - self.start_iteration
            elapsed = time.time() - self.started
            rate = done / elapsed if elapsed > 0 else float("nan")
            eta = (self.total - iteration) / rate if rate and rate > 0 else float("nan")
            best = self.best or {}
            mape = best.get("mape")
            print(f"[{self.label}] iteration {iteration}/{self.total}  best train MAPE "
                  f"{'n/a' if mape is None else f'{100 * mape:.2f}%'} with "
                  f"{best.get('num_operations', '?')} ops  {rate:.1f} it/s  ETA {eta:.0f} s",
                  flush=True)


def run_evolution(*, target: str, run_seed: int, settings: EvolveSettings,
                  evaluator_settings: EvaluatorSettings, train_path: Path,
                  feature_names: list[str], system_message: str, seeds: dict[str, str],
                  checkpoint_root: Path, models: list, model_names: list[str],
                  label: str) -> RunResult:
    """Run (or resume) one evolution run to its full budget and return its final state."""
    from openevolve import OpenEvolve
    from openevolve import process_parallel
    from openevolve.config import Config, DatabaseConfig, EvaluatorConfig, LLMConfig, PromptConfig

    wrong = [k for k, v in DETERMINISTIC_ENV.items() if os.environ.get(k) != v]
    if wrong:
        raise InputError(", ".join(wrong), f"must be set as {DETERMINISTIC_ENV} before Python "
                                           "starts for a reproducible run (the evolve stage "
                                           "re-executes itself with them)")
    checkpoint_root = Path(checkpoint_root)
    settings_identity = asdict(settings)
    if settings.iterations_override is None:  # the evolve stage's identity as before the field
        del settings_identity["iterations_override"]
    identity = {"target": target, "seed": run_seed, "settings": settings_identity,
                "evaluator": evaluator_settings.to_dict(), "features": feature_names,
                "seeds": seeds, "system": system_message, "models": model_names,
                "train": hashlib.sha256(Path(train_path).read_bytes()).hexdigest()}
    stamp = checkpoint_root / "run_identity.json"
    resume = latest_checkpoint(checkpoint_root)
    if resume is not None and (not stamp.exists()
                               or json.loads(stamp.read_text()).get("fingerprint")
                               != fingerprint(identity)):
        resume = None  # checkpoints of another configuration: start fresh
    if resume is None:
        shutil.rmtree(checkpoint_root, ignore_errors=True)
    checkpoint_root.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"fingerprint": fingerprint(identity)}) + "\n")

    seed_dir = checkpoint_root / "seeds"
    seed_dir.mkdir(exist_ok=True)
    seed_paths = {}
    for name in SEED_NAMES:
        seed_paths[name] = seed_dir / f"{name}.py"
        seed_paths[name].write_text(seeds[name], encoding="utf-8")

    adapter_path = checkpoint_root / "evaluator_config.json"
    adapter = AdapterConfig(str(Path(train_path).resolve()), target, tuple(feature_names),
                            evaluator_settings)
    adapter.write(adapter_path)
    os.environ["STEPFORMULA_EVALUATOR_CONFIG"] = str(adapter_path.resolve())
    os.environ[OP_BINS_ENV_VAR] = json.dumps(list(settings.op_bin_edges))
    configure(adapter)

    n_op_bins = len(settings.op_bin_edges) + 1
    config = Config(
        max_iterations=settings.iterations,
        checkpoint_interval=settings.checkpoint_interval,
        log_level="WARNING",
        random_seed=run_seed,
        language="python",
        diff_based_evolution=False,  # full rewrites: what the small local model can write
        max_code_length=settings.max_code_length,
        llm=LLMConfig(models=models, api_base="http://127.0.0.1:9/v1", retries=0, timeout=600),
        prompt=PromptConfig(system_message=system_message, num_top_programs=3,
                            num_diverse_programs=2, include_artifacts=True,
                            use_template_stochasticity=False,
                            suggest_simplification_after_chars=None),
        database=DatabaseConfig(
            in_memory=True, log_prompts=False, population_size=settings.population_size,
            archive_size=settings.archive_size, num_islands=settings.islands,
            island_initial_programs=[None, str(seed_paths["roofline"]), str(seed_paths["random3"])]
            + [None] * (settings.islands - 3),
            migration_interval=settings.migration_interval, random_seed=run_seed,
            feature_dimensions=["op_bin", "error_regime"],
            feature_bins={"op_bin": n_op_bins, "error_regime": REGIME_BINS},
            cleanup_old_artifacts=False, max_snapshot_artifacts=None),
        evaluator=EvaluatorConfig(timeout=60, max_retries=0, cascade_evaluation=False,
                                  parallel_evaluations=1, enable_artifacts=True),
    )

    # Program ids: seeded, different for the main process and for the worker of each (re)start.
    start_iteration = 0 if resume is None else resume[1]
    uuid.uuid4 = SeededIds(f"{run_seed}:main:{start_iteration}")
    original_init = process_parallel._worker_init
    process_parallel._worker_init = _seeded_worker_init(f"{run_seed}:worker:{start_iteration}",
                                                        original_init)
    journal_path = checkpoint_root / "journal.jsonl"
    if resume is None:
        journal_path.unlink(missing_ok=True)
    progress = _Progress(settings.iterations, settings.progress_every, label, start_iteration)
    journal = RunJournal(journal_path, on_record=progress)
    root_handlers = list(logging.getLogger().handlers)
    started = time.time()
    try:
        controller = OpenEvolve(str(seed_paths["blackbox"]), str(ENTRY_FILE), config,
                                output_dir=str(checkpoint_root))
        # OpenEvolve adds console handlers to the root logger; the progress line replaces them.
        for handler in logging.getLogger().handlers:
            if handler not in root_handlers and isinstance(handler, logging.StreamHandler) \
                    and not isinstance(handler, logging.FileHandler):
                logging.getLogger().removeHandler(handler)
        controller.evolution_tracer = journal
        controller.database.feature_stats.update({
            "op_bin": {"min": -0.5, "max": n_op_bins - 0.5, "values": []},
            "error_regime": {"min": -0.5, "max": REGIME_BINS - 0.5, "values": []}})
        _journal_seeds(controller, journal, seed_paths)
        _prune_old_checkpoints(controller, keep=2)
        remaining = settings.iterations - start_iteration
        if remaining > 0:
            asyncio.run(controller.run(iterations=remaining,
                                       checkpoint_path=None if resume is None else str(resume[0])))
        database = controller.database
    finally:
        process_parallel._worker_init = original_init
        for handler in list(logging.getLogger().handlers):
            if handler not in root_handlers:
                logging.getLogger().removeHandler(handler)
                handler.close()
    return RunResult(database=database, records=read_journal(journal_path),
                     wall_seconds=time.time() - started,
                     resumed_from=None if resume is None else resume[1], model_names=model_names)


def _journal_seeds(controller, journal: RunJournal, seed_paths: dict[str, Path]) -> None:
    """Record each seed as OpenEvolve adds it (it adds them only on a fresh start)."""
    original = controller._add_initial_program
    by_code = {path.read_text(encoding="utf-8"): name for name, path in seed_paths.items()}

    async def add_and_record(code, iteration, target_island=None):
        program = await original(code, iteration, target_island)
        journal.log_seed(by_code.get(code, "unknown"), program)
        return program

    controller._add_initial_program = add_and_record


def _prune_old_checkpoints(controller, keep: int) -> None:
    """Keep the newest `keep` checkpoints: a resume needs only the last one, and a full run
    would otherwise leave hundreds of database copies behind."""
    original = controller._save_checkpoint

    def save_and_prune(iteration: int) -> None:
        # A torn checkpoint of this iteration left by a killed run holds programs of that run:
        # saved over, they would come back as orphans on a later resume.
        shutil.rmtree(Path(controller.output_dir) / "checkpoints" / f"checkpoint_{iteration}",
                      ignore_errors=True)
        original(iteration)
        root = Path(controller.output_dir) / "checkpoints"
        found = sorted((int(p.name.split("_")[1]), p) for p in root.glob("checkpoint_*"))
        for _, path in found[:-keep]:
            shutil.rmtree(path, ignore_errors=True)

    controller._save_checkpoint = save_and_prune


def finish(checkpoint_root: Path) -> None:
    """A finished run's checkpoints are not needed again (see the module docstring)."""
    shutil.rmtree(checkpoint_root, ignore_errors=True)
