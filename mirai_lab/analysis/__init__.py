"""Finished runs read back and compared: collection, statistics (intervals, verdicts, power, speed-up), seed plans."""
