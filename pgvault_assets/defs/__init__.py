"""The thin Dagster layer: assets, checks, schedules and sensors over the engine.

Each day's checks are partitioned like the backup they check, which Dagster marks as a preview
feature and warns about at every definition; the warning says nothing an operator can act on,
so it is silenced here, before any definition is built, for the CLI and `dagster` alike.
"""

import warnings

from dagster import PreviewWarning

warnings.filterwarnings(
    "ignore",
    message="Specifying a partitions_def on an AssetCheckSpec",
    category=PreviewWarning,
)
