"""Taking backups and keeping the right ones: the daily backup, retention and its cleanup."""
