"""Running experiments: specs (shipped in `specs/`), sweeps, the run queue, tuning, reproductions."""
