"""Training a diffusion model: the loop (loop.py), its step plan and budgets (plan.py), the learning rate as a
function of progress (lr.py), the run folder (run_folder.py), resumable state (state.py), one writer per run
folder (lock.py) and stop requests from signals (signals.py)."""
