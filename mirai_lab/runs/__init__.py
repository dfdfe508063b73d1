"""A run as a stored object: identity, state, files, checkpoints, curves and caches.

Nothing here trains or evaluates; the training and experiment layers build on it.
"""
