"""The rendered world: scene geometry (geometry.py), the ray-cast renderer (render.py), and random honest scenes
built on both (scene.py)."""
