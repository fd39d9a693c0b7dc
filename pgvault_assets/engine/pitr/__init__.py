"""Point-in-time recovery by orchestrating pgBackRest: its configuration, commands and JSON.

pgvault does not archive WAL itself. pgBackRest does (encrypted before upload, refusing WAL
of another cluster); pgvault writes its configuration, runs it as the `postgres` OS user,
reads its JSON, and proves a recovery by replaying into a throwaway cluster.
"""
