"""Reports of finished sweeps: collecting runs, statistics, tables and figures."""
