"""The process environment a reproducible stage needs, set before Python starts.

* PYTHONHASHSEED=0: set order (OpenEvolve's islands and archive are sets) follows string hashes;
* single-threaded BLAS: a threaded reduction changes the last bits of a fit, and a flat MAPE
  landscape can amplify them into another optimum;
* MALLOC_PERTURB_: scipy's MINPACK LM reads uninitialised memory when a program's Jacobian has
  zero columns (constants with no effect, e.g. in the losing branch of np.maximum); glibc then
  fills every new and freed block with a fixed byte, so what it reads is always the same.

A stage that fits constants calls `reexec_if_needed` first: if the environment is not set, it
replaces itself with the same command under that environment.
"""

from __future__ import annotations

import os
import sys

DETERMINISTIC_ENV = {"PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                     "MKL_NUM_THREADS": "1", "MALLOC_PERTURB_": "165"}


def environment_is_deterministic() -> bool:
    return all(os.environ.get(k) == v for k, v in DETERMINISTIC_ENV.items())


def reexec_if_needed(module: str) -> None:
    """Re-run `python -m <module> <same args>` with DETERMINISTIC_ENV unless it is already set."""
    if not environment_is_deterministic():
        os.execve(sys.executable, [sys.executable, "-m", module] + sys.argv[1:],
                  {**os.environ, **DETERMINISTIC_ENV})
