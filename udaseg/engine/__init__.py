"""Pieces of the training loop (udaseg/train.py reads top to bottom and calls these)."""
