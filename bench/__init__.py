"""Benchmarks (`make bench`): they start and stop everything themselves and write docs/benchmarks.md."""
