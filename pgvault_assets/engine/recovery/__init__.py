"""Operator work on top of restore: drills, row recovery, restore proofs, kept databases."""
