"""Benchmarks: each prints ratios against a baseline measured in the same run and writes its
section of bench/RESULTS.md (plus raw JSON under bench/results/)."""
