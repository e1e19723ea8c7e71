"""Data: the course layout (course.py), the scene renderer (render.py) and the kit writer (synth.py)."""
