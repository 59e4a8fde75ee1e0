"""Predicts the time of one vLLM engine step in microseconds."""
import numpy as np

def predict(f):
    d = f["hidden_dim"]
    attention = ((-7.9319615142958355)) * d * d
    mlp = 8.296272583480459 * d * f["intermediate_dim"]
    active_weights = f["num_layers"] * (attention + mlp * f["active_experts"])
    weight_bytes = 3.2369579614569375 * f["num_layers"] * (attention + mlp * f["num_experts"])
    gemm = np.maximum(1.5635835441862582 * f["scheduled_tokens"] * active_weights / f["peak_flops_bf16"],
                      weight_bytes / f["peak_bandwidth"])
    kv_elements = 1.7812925685429946 * f["num_layers"] * d * f["kv_sum"]
    attention_time = np.maximum(2.0 * kv_elements / f["peak_flops_bf16"],
                                1.4649346617170522 * kv_elements / f["peak_bandwidth"])
    return ((-2784.627492312342)) + 690348.42411232 * (gemm + attention_time)