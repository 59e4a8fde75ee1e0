"""Predicts the time of one vLLM engine step in microseconds."""
import numpy as np

def predict(f):
    return (42.79694499669131 - 0.38837605424760113 * f['decode_tokens'] - (-0.0034709323453014918) * f['intermediate_dim']) * (107.02267275657505 + f['num_decode_reqs'])