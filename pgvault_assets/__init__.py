"""pgvault: PostgreSQL backup and recovery on Dagster."""

__version__ = "0.1.0"
