"""Evaluations, one module per kind of data (toy: two-sample distances against exact draws)."""
