"""Predicts the time of one vLLM engine step in microseconds."""
import numpy as np

def predict(f):
    return 11.879089600843145 + np.where(f['prefill_tokens'] > 1.5, 13.633029305710807, 7.120868089579744) * f['num_decode_reqs']