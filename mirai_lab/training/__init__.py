"""Training one run: the loop, its step, schedule, EMA, batches, and the run lifecycle."""
