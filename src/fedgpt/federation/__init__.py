"""Federated rounds, sampling and checkpoints."""
