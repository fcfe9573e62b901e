"""Benchmarks: measure fleche next to its peers and report ratios from one run."""
