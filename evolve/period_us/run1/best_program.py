"""Predicts the time of one vLLM engine step in microseconds."""
import numpy as np

def predict(f):
    return 11519.177143320441 + 8.886743635957828 * ((35.83817296929192 + 53.65908153128112 * np.log1p(0.03111241568967671 * f['num_decode_reqs'])) * (2.5563727863417637e-15 * f['peak_flops_bf16']))