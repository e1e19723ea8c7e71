"""Evaluation: the course metric (metric.py), the evaluator networks and the choice of one (evaluator.py),
training our own (fit.py), `iclevr eval` (run.py), its terminal tables (report.py), annotated grids
(annotate.py) and the self-contained HTML pages (html.py)."""
