"""Predicts the time of one vLLM engine step in microseconds."""
import numpy as np

def predict(f):
    return np.where(f['num_decode_reqs'] > 45.63, np.where(f['prefill_tokens'] > 2.324, 0.01801182502478582, (-0.0020928481575559488)) * f['kv_sum'] + 4.53805185368928e-13 * f['peak_flops_bf16'], np.where(f['prefill_tokens'] > 2.324, 0.021282493074551212, 0.011390076128094506) * f['kv_sum'])