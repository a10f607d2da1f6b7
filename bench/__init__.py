"""Benchmarks: each module is a script printing its figures last as one JSON line with a "bench" key."""
