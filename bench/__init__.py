"""Benchmarks, run by hand (not in CI): `make bench` or `.venv/bin/python -m bench` runs them all and prints a table."""
