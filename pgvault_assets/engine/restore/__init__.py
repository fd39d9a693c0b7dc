"""Putting a backup back: the restore mechanism, parallel load and the staging target."""
