"""Benchmarks, demos and labelled data; never imported by the runtime (only the CLI's tool commands)."""
