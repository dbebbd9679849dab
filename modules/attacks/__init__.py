"""Attacks that are trained, not only stamped: BadCLIP's optimized patch and its poisoned-weights attack."""
