"""Raw data sources: each returns one interaction DataFrame.

Every loader returns a single :class:`pandas.DataFrame` with one row per
interaction, user and item attributes already joined in, and plain column
names.

Example:
    >>> from polyrec.data.sources import make_synthetic
    >>> make_synthetic(n_domains=2, n_samples=100).shape[0]
    200
"""

from polyrec.data.sources.movielens import (
    MOVIELENS_1M_STATS,
    MOVIELENS_100K_STATS,
    MOVIELENS_COLUMNS,
    MOVIELENS_NAMES,
    MOVIELENS_WHEEL,
    ChecksumMismatchError,
    DownloadError,
    ensure_movielens,
    fetch_movielens_wheel,
    load_movielens,
)
from polyrec.data.sources.synthetic import make_synthetic
from polyrec.data.sources.tabular import SUPPORTED_FORMATS, load_atomic, load_table

__all__ = [
    "MOVIELENS_1M_STATS",
    "MOVIELENS_100K_STATS",
    "MOVIELENS_COLUMNS",
    "MOVIELENS_NAMES",
    "MOVIELENS_WHEEL",
    "SUPPORTED_FORMATS",
    "ChecksumMismatchError",
    "DownloadError",
    "ensure_movielens",
    "fetch_movielens_wheel",
    "load_atomic",
    "load_movielens",
    "load_table",
    "make_synthetic",
]
