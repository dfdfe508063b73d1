"""mirai-lab: diagnostics of foresight (Mirai) for autoregressive image generation."""

__version__ = "0.1.0"
