"""Predicts the time of one vLLM engine step in microseconds."""
import numpy as np

def predict(f):
    return 10.241279270834639 + 7.305944143139641 * f['decode_tokens']