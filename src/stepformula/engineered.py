"""The engineered feature set of the Ridge baseline: the raw features plus physics-shaped terms.

Every column is documented in ENGINEERED (name -> what it is and why it may help). Everything is
computed from the available raw features only, so the set is what a formula could also see.
FLOP counts assume a dense decoder layer of 4*d^2 attention-projection weights (q, k, v, o at
full width: an upper bound under grouped-query attention, whose k and v are narrower) plus
3*d*I gated-MLP weights per active expert; bytes are BF16 (2 per weight or KV element).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

RAW = ["prefill_tokens", "decode_tokens", "scheduled_tokens", "num_prefill_reqs",
       "num_decode_reqs", "kv_mean", "kv_sum", "hidden_dim", "num_layers", "num_heads",
       "intermediate_dim", "peak_flops_bf16", "peak_bandwidth", "num_experts", "active_experts"]

ENGINEERED: dict[str, str] = {
    "batch_reqs": "num_prefill_reqs + num_decode_reqs: requests that got tokens",
    "has_prefill": "1 if the step has any prefill token: chunked prefill changes the kernel mix",
    "prefill_sq": "prefill_tokens^2 / 1e3: attention inside a prefill chunk grows quadratically",
    "prefill_x_decode": "prefill_tokens * decode_tokens / 1e3: interaction of mixed batches",
    "decode_x_kv_mean": "decode_tokens * kv_mean / 1e3: decode attention reads every token's KV",
    "prefill_x_kv_mean": "prefill_tokens * kv_mean / 1e3: prefill attends over resident context",
    "log_scheduled": "log1p(scheduled_tokens): fixed per-step costs saturate",
    "layer_weights": "4*d^2 + 3*d*I*active_experts: active weights of one layer",
    "weight_bytes": "2 * L * (4*d^2 + 3*d*I*num_experts): bytes of all weights (BF16)",
    "weight_read_us": "weight_bytes / peak_bandwidth in µs: the memory floor of any step",
    "prefill_flops": "2 * prefill_tokens * L * layer_weights: GEMM FLOPs of prefill tokens",
    "decode_flops": "2 * decode_tokens * L * layer_weights: GEMM FLOPs of decode tokens",
    "prefill_compute_us": "prefill_flops / peak_flops_bf16 in µs",
    "decode_compute_us": "decode_flops / peak_flops_bf16 in µs",
    "kv_read_us": "2 * 2 * L * d * kv_sum / peak_bandwidth in µs: reading K and V (MHA bound)",
    "arithmetic_intensity": "(prefill_flops + decode_flops) / weight_bytes: FLOP per weight byte",
    "roofline_gemm_us": "max(compute, weight read) in µs for the step's GEMMs",
    "is_moe": "1 if the model has more than one expert",
    "active_expert_share": "active_experts / num_experts",
    "kv_pressure": "kv_sum * L * d / 1e9: KV elements resident (billions), what attention reads",
}


def engineered_features(frame: pd.DataFrame) -> pd.DataFrame:
    """The raw features plus ENGINEERED, one float64 column each, in a fixed order."""
    f = {name: frame[name].to_numpy(dtype=float) for name in RAW}
    d, L, I = f["hidden_dim"], f["num_layers"], f["intermediate_dim"]
    layer_weights = 4 * d * d + 3 * d * I * f["active_experts"]
    weight_bytes = 2 * L * (4 * d * d + 3 * d * I * f["num_experts"])
    prefill_flops = 2 * f["prefill_tokens"] * L * layer_weights
    decode_flops = 2 * f["decode_tokens"] * L * layer_weights
    weight_read_us = weight_bytes / f["peak_bandwidth"] * 1e6
    compute_us = (prefill_flops + decode_flops) / f["peak_flops_bf16"] * 1e6
    columns = dict(f)
    columns.update({
        "batch_reqs": f["num_prefill_reqs"] + f["num_decode_reqs"],
        "has_prefill": (f["prefill_tokens"] > 0).astype(float),
        "prefill_sq": f["prefill_tokens"] ** 2 / 1e3,
        "prefill_x_decode": f["prefill_tokens"] * f["decode_tokens"] / 1e3,
        "decode_x_kv_mean": f["decode_tokens"] * f["kv_mean"] / 1e3,
        "prefill_x_kv_mean": f["prefill_tokens"] * f["kv_mean"] / 1e3,
        "log_scheduled": np.log1p(f["scheduled_tokens"]),
        "layer_weights": layer_weights,
        "weight_bytes": weight_bytes,
        "weight_read_us": weight_read_us,
        "prefill_flops": prefill_flops,
        "decode_flops": decode_flops,
        "prefill_compute_us": prefill_flops / f["peak_flops_bf16"] * 1e6,
        "decode_compute_us": decode_flops / f["peak_flops_bf16"] * 1e6,
        "kv_read_us": 4 * L * d * f["kv_sum"] / f["peak_bandwidth"] * 1e6,
        "arithmetic_intensity": (prefill_flops + decode_flops) / weight_bytes,
        "roofline_gemm_us": np.maximum(compute_us, weight_read_us),
        "is_moe": (f["num_experts"] > 1).astype(float),
        "active_expert_share": f["active_experts"] / f["num_experts"],
        "kv_pressure": f["kv_sum"] * L * d / 1e9,
    })
    return pd.DataFrame(columns, index=frame.index)


ALL_COLUMNS = RAW + list(ENGINEERED)
