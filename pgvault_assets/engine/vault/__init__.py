"""What a backup is made of: keys, encryption, the manifest, the dump-to-store pipeline, the vault."""
