"""Benchmarks comparing shardlog with a baseline (SQLite) on the same generated data in the same run."""
