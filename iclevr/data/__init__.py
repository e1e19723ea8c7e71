"""Data: reading a course kit (course.py), a kit's labels before rendering (plan.py), the kit writer (synth.py),
the embedded kits and which kit a command reads (kits.py), contact sheets (preview.py), the `data check`
report (report.py), and the rendered world (world/)."""
