"""iclevr: class-conditional denoising diffusion for multi-object i-CLEVR scenes."""

__version__ = "0.1.0"
