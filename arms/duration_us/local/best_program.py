"""Predicts the time of one vLLM engine step in microseconds."""
import numpy as np

def predict(f):
    return 7.520421706081834 + 0.35607438941042346 * f["prefill_tokens"] + 7.44347570741229 * f["decode_tokens"]