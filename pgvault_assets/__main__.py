"""`pgvault`, the console script (also `python -m pgvault_assets`).

A command's process ends with the command, so the modules it loads live as long as it does:
the collector stays off while the CLI loads (it would walk them again and again as they
arrive), and what loaded is then frozen out of its reach. `cli.main` does the same for
Dagster when a command loads it.
"""

import gc
import sys


def run() -> int:
    gc.disable()
    try:
        from pgvault_assets.cli import main
    finally:
        gc.freeze()
        gc.enable()
    return main()


if __name__ == "__main__":
    sys.exit(run())
