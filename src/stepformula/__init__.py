"""stepformula: evolve, select and ship a compact formula for the duration of one vLLM engine step."""
