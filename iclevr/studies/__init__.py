"""Studies built from the core: the noise-schedule comparison (compare.py), the end-to-end demo (demo.py) and
their figures (plots.py)."""
