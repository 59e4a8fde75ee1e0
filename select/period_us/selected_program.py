"""Predicts the time of one vLLM engine step in microseconds."""
import numpy as np

def predict(f):
    return 9923.513986602426 + (44.50171161699109 - (-10.15350405445497) * np.sqrt(f['num_decode_reqs'])) * f['num_layers']