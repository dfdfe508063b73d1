"""The Mirai foresight objective: layouts, sources, projectors, losses and schedules.

Knows nothing of the CLI or of sweeps; the trainer builds a `Foresight` from the config.
"""
