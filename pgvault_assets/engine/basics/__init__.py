"""Basics every room uses: the clock, names, interrupts, test pause points, tier policy."""
