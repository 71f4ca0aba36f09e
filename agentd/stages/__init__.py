"""Model stages: one module per backend, each owning its runtime."""
