"""Write the quickstart's Dagster instance file: the repository's `dagster.yaml` (pools, run
monitoring and retries, telemetry and the welcome modal off) without its PostgreSQL storage,
so the embedded default runs on SQLite with the settings production has.

    python scripts/quickstart_instance.py dagster.yaml "$DAGSTER_HOME/dagster.yaml"

A file that is there and was not written by this script is the operator's, and stays.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HEADER = "# Written by pgvault's quickstart.sh from the repository's dagster.yaml, on SQLite.\n"


def main(source: Path, target: Path) -> int:
    if target.exists() and target.read_text() and not target.read_text().startswith(HEADER):
        print(f"{target} is not the quickstart's; left as it is")
        return 0
    settings = yaml.safe_load(source.read_text())
    settings.pop("storage", None)
    target.write_text(HEADER + yaml.safe_dump(settings, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
