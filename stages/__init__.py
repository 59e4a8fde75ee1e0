"""Pipeline stages: thin scripts, one per DVC stage, run as `python -m stages.<name>`."""
