"""Predicts the time of one vLLM engine step in microseconds."""
import numpy as np

def predict(f):
    d = f["hidden_dim"]
    attention = (-7.931958306377055) * d * d
    mlp = 8.296270035163616 * d * f["intermediate_dim"]
    active_weights = f["num_layers"] * (attention + mlp * f["active_experts"])
    weight_bytes = 3.2369581799430307 * f["num_layers"] * (attention + mlp * f["num_experts"])
    gemm = np.maximum(1.5635834132190212 * f["scheduled_tokens"] * active_weights / f["peak_flops_bf16"],
                      weight_bytes / f["peak_bandwidth"])
    kv_elements = 1.7812911914479628 * f["num_layers"] * d * f["kv_sum"]
    attention_time = np.maximum(2.0 * kv_elements / f["peak_flops_bf16"],
                                1.464933529474365 * kv_elements / f["peak_bandwidth"])
    return (-2784.6271703094244) + 690347.8028306961 * (gemm + attention_time)
