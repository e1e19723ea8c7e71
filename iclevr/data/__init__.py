"""Data: the course layout (course.py), the embedded world (geometry.py, render.py, scene.py), the kit
writer (synth.py) and contact sheets (preview.py)."""
