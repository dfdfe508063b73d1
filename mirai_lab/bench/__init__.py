"""`mirai-lab bench`: the toolkit's speed against this machine's own limits (suite.py runs it).

The package itself imports nothing, so the command line can read the bench's sections
(timing.py) and LlamaGen's default folder (llamagen.py) without importing the trainer.
"""
