"""The raw analytical decomposition of a step: a roofline estimate, nothing fitted.

Four parts, each max(FLOPs / peak FLOP/s, bytes / peak bytes/s) over the tensor-parallel group's
aggregate peaks, summed (the BLIS roofline's shape):

* prefill GEMM: 2 FLOPs per active weight per prefill token; reads every weight once.
* prefill attention: each prefill request's chunk attends causally over itself
  (chunk = prefill_tokens / num_prefill_reqs, ~chunk^2/2 query-key pairs, 4*d FLOPs each, QK^T
  and AV); reads its own K and V. Prefix context is unknown in the step tables, so it is left
  out: this part is a lower bound.
* decode GEMM: as prefill GEMM, for decode tokens; reads every weight again (the raw
  decomposition does not share the weight read between the two; that is what "raw" means).
* decode attention: each decode token attends over its request's context; kv_sum is the KV the
  pool holds, so 4*d FLOPs per resident KV token per layer, and K and V of width d*kv_heads/heads
  read once.

Weights per layer: q and o projections d*d each, k and v d*d_kv each, gated MLP 3*d*I per expert
(all experts read, active ones computed). BF16: 2 bytes per weight and per KV element.
The LM head and sampling are left out (per-step, not per-layer, and small at these sizes).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .facts import Facts

BYTES_PER_ELEMENT = 2.0  # BF16 weights and KV cache


def roofline_parts_us(frame: pd.DataFrame, facts: Facts) -> dict[str, np.ndarray]:
    """The four parts (µs) for every row; rows name their model, TP aggregate is in the row."""
    models = {name: facts.model(name) for name in frame["model"].unique()}

    def fact(attribute: str) -> np.ndarray:
        return frame["model"].map({m: float(getattr(f, attribute)) for m, f in models.items()}
                                  ).to_numpy(dtype=float)

    d, L, I = fact("hidden_dim"), fact("num_layers"), fact("intermediate_dim")
    d_kv = d * fact("num_kv_heads") / fact("num_heads")
    experts, active = fact("num_experts"), fact("active_experts")
    flops_peak = frame["peak_flops_bf16"].to_numpy(dtype=float)
    bandwidth = frame["peak_bandwidth"].to_numpy(dtype=float)
    prefill = frame["prefill_tokens"].to_numpy(dtype=float)
    decode = frame["decode_tokens"].to_numpy(dtype=float)
    prefill_reqs = frame["num_prefill_reqs"].to_numpy(dtype=float)
    kv_sum = frame["kv_sum"].to_numpy(dtype=float)

    attention_weights = 2 * d * d + 2 * d * d_kv
    active_weights = L * (attention_weights + 3 * d * I * active)
    weight_bytes = BYTES_PER_ELEMENT * L * (attention_weights + 3 * d * I * experts)

    def roof(flops: np.ndarray, bytes_moved: np.ndarray) -> np.ndarray:
        return np.maximum(flops / flops_peak, bytes_moved / bandwidth) * 1e6

    has_prefill = prefill > 0
    has_decode = decode > 0
    chunk = np.divide(prefill, prefill_reqs, out=np.zeros_like(prefill), where=prefill_reqs > 0)
    return {
        "prefill_gemm": roof(2 * prefill * active_weights, weight_bytes * has_prefill),
        "prefill_attention": roof(4 * d * L * prefill * chunk / 2,
                                  BYTES_PER_ELEMENT * 2 * L * d_kv * prefill),
        "decode_gemm": roof(2 * decode * active_weights, weight_bytes * has_decode),
        "decode_attention": roof(4 * d * L * kv_sum * has_decode,
                                 BYTES_PER_ELEMENT * 2 * L * d_kv * kv_sum * has_decode),
    }


def roofline_us(frame: pd.DataFrame, facts: Facts) -> np.ndarray:
    """Predicted step time (µs): the sum of the four parts."""
    return np.sum(list(roofline_parts_us(frame, facts).values()), axis=0)
