"""MLflow tracking: one local store by default (SQLite + artifact folder in the working directory)."""
from imgrestore.tracking.store import (  # noqa: F401
    DEFAULT_DB,
    default_tracking_uri,
    get_or_create_experiment,
    setup_tracking,
)
