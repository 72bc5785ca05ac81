"""Reading the Parquet tables of a prepared directory: a missing or damaged file is one clear error."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

from recfl.core.errors import RecflError


def read_table(path: Path, remedy: str = "prepare the data set again") -> pd.DataFrame:
    """The table at ``path``, or a :class:`RecflError` naming the file and ``remedy``."""
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise RecflError(f"{path}: no such file; {remedy}") from None
    except (pa.ArrowException, OSError) as exc:
        raise RecflError(f"{path}: not a readable Parquet file ({exc}); {remedy}") from None
