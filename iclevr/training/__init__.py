"""Training a diffusion model: the loop (loop.py), its run folder (run_folder.py) and resumable state (state.py)."""
