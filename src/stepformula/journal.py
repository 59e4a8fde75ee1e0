"""The run journal: one JSON line per iteration, written as it happens, the source of the history.

It plugs into OpenEvolve as its evolution tracer (the object the parallel controller calls with
`log_trace` for every admitted child and `log_failure` for every iteration that produced none),
and the evolve stage adds one line per seed program. Every line is flushed at once, so a run
killed with SIGKILL keeps every line it wrote. After a resume the iterations since the last
checkpoint run again and are appended again: `read_journal` keeps the last line per iteration,
so the history has neither gaps nor duplicates.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Callable

_FAILURE_CLASSES = [
    ("timeout", re.compile(r"time(d)? ?out", re.I)),
    ("http_error", re.compile(r"(error code|status|http)[^0-9]{0,20}[45]\d\d|internal server error", re.I)),
    ("connection", re.compile(r"connect", re.I)),
    ("no_code_in_answer", re.compile(r"no valid code|no valid diffs", re.I)),
    ("identical_to_parent", re.compile(r"identical|did not change", re.I)),
    ("too_long", re.compile(r"exceeds maximum length", re.I)),
]


def failure_class(error: str) -> str:
    """A short reason class for an engine failure message (for counting by reason)."""
    for name, pattern in _FAILURE_CLASSES:
        if pattern.search(error or ""):
            return name
    return "other"


class _Normalise(ast.NodeTransformer):
    """Drops docstrings and other bare-constant statements; optionally masks numeric constants."""

    def __init__(self, mask_numbers: bool):
        self.mask_numbers = mask_numbers

    def generic_visit(self, node):
        node = super().generic_visit(node)
        for name in ("body", "orelse", "finalbody"):
            body = getattr(node, name, None)
            if isinstance(body, list) and body and all(isinstance(s, ast.stmt) for s in body):
                kept = [s for s in body if not (isinstance(s, ast.Expr)
                                                and isinstance(s.value, ast.Constant))]
                setattr(node, name, kept or [ast.Pass()])
        return node

    def visit_Constant(self, node):
        if self.mask_numbers and isinstance(node.value, (int, float)) \
                and not isinstance(node.value, bool):
            return ast.copy_location(ast.Constant(value=0), node)
        return node


def program_digests(code: str) -> tuple[str, str]:
    """(program digest, structure digest) of a program text, 16 hex digits each.

    The program digest ignores comments, formatting and docstrings (two answers that differ only
    there are one program); the structure digest also ignores the values of numeric constants
    (one formula shape, whatever its coefficients, thresholds or exponents). Text that does not
    parse is digested as it is, for both.
    """
    def digest(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    try:
        tree = ast.parse(code or "")
    except (SyntaxError, ValueError):
        return digest(code or ""), digest(code or "")
    program = ast.unparse(_Normalise(False).visit(tree))
    structure = ast.unparse(_Normalise(True).visit(ast.parse(program)))
    return digest(program), digest(structure)


def _digest_fields(program) -> dict:
    code = getattr(program, "code", None)
    if not isinstance(code, str):
        return {}
    program_sha, structure_sha = program_digests(code)
    return {"code_sha": program_sha, "structure_sha": structure_sha}


def _clean(value: Any) -> Any:
    """JSON has no NaN: undefined metrics become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


class RunJournal:
    """Append-only JSONL of iterations; OpenEvolve's tracer interface (log_trace, log_failure,
    close) plus `log_seed`. `on_record` sees every record (the progress line uses it)."""

    def __init__(self, path: Path, on_record: Callable[[dict], None] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        self.on_record = on_record
        self.enabled = True

    def _drop_torn_tail(self) -> None:
        """Cut a torn last line (a run killed mid-write) before appending: the next record
        would otherwise be glued to it, and read_journal would drop both."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as out:
                out.truncate(data.rfind(b"\n") + 1)

    def _write(self, record: dict) -> None:
        record = _clean(record)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record, sort_keys=True) + "\n")
            out.flush()
        if self.on_record is not None:
            self.on_record(record)

    def log_seed(self, name: str, program) -> None:
        self._write({"iteration": 0, "kind": "seed", "seed": name, "program_id": program.id,
                     "metrics": dict(program.metrics), "engine": "seed", "time": time.time(),
                     "code": program.code, **_digest_fields(program)})

    def log_trace(self, iteration, parent_program, child_program, prompt=None, llm_response=None,
                  artifacts=None, island_id=None, metadata=None, **_ignored) -> None:
        metadata = metadata or {}
        usage = metadata.get("token_usage") or {}
        failure = (artifacts or {}).get("failure")
        self._write({
            "iteration": int(iteration), "kind": "child", "program_id": child_program.id,
            "parent_id": getattr(parent_program, "id", None), "island": island_id,
            "metrics": dict(child_program.metrics), "engine": metadata.get("llm_model"),
            "refusal": failure, "token_usage": usage, "time": time.time(),
            "code": child_program.code, **_digest_fields(child_program)})

    def log_failure(self, iteration, error, parent_id=None, evolution_mode=None, prompt=None,
                    llm_response=None, token_usage=None, island_id=None, **_ignored) -> None:
        self._write({
            "iteration": int(iteration), "kind": "engine_failure", "parent_id": parent_id,
            "island": island_id, "error": str(error)[:500], "reason": failure_class(str(error)),
            "token_usage": token_usage or {}, "time": time.time()})

    def flush(self) -> None:  # lines are flushed as written
        pass

    def close(self) -> None:
        pass


def read_journal(path: Path) -> list[dict]:
    """Records in iteration order, the last written one per iteration (seeds: one per seed name).

    A torn last line (the process died mid-write) is dropped: everything before it is whole.
    """
    latest: dict[tuple, dict] = {}
    if not Path(path).exists():
        return []
    with Path(path).open(encoding="utf-8") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            key = ((0, record["seed"]) if record.get("kind") == "seed"
                   else (record["iteration"], ""))
            latest[key] = record
    return [latest[k] for k in sorted(latest)]
