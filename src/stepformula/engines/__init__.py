"""Mutation engines: the language models that propose new programs to OpenEvolve."""
