"""Evaluation: the course metric (metric.py), the evaluator networks (evaluator.py), training our own (fit.py),
`iclevr eval` (run.py) and its terminal tables (report.py)."""
