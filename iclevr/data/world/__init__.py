"""The embedded world: scene geometry (geometry.py), random honest scenes (scene.py) and the ray-cast renderer
(render.py)."""
