"""Point-in-time recovery by orchestrating pgBackRest: its configuration, commands and JSON.

pgvault does not archive WAL itself. pgBackRest does (encrypted before upload, refusing WAL
of another cluster); pgvault writes its configuration, runs it as the `postgres` OS user,
reads its JSON, and proves a recovery by replaying into a throwaway cluster.
"""

# pgBackRest's backup types; here, where `pgvault pitr backup --type` can name them without
# loading the modules that run pgBackRest.
BACKUP_KINDS = ("full", "diff", "incr")
