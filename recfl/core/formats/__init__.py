"""Loaders from public data formats into the canonical table, by format name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from recfl.core.errors import RecflError
from recfl.core.formats import amazon, movielens, sequence, synthetic, taobao
from recfl.core.formats.base import SourceData
from recfl.core.formats.synthetic import SyntheticSpec, generate

LOADERS: dict[str, Callable[[Path], SourceData]] = {
    "movielens-100k": movielens.load_100k,
    "movielens-1m": movielens.load_1m,
    "amazon-5core": amazon.load,
    "taobao": taobao.load,
    "sequence": sequence.load,
}
LABEL_RULES = {
    "movielens-100k": movielens.LABEL_RULE,
    "movielens-1m": movielens.LABEL_RULE,
    "amazon-5core": amazon.LABEL_RULE,
    "taobao": taobao.LABEL_RULE,
    "sequence": sequence.LABEL_RULE,
    "synthetic": synthetic.LABEL_RULE,
}
FORMATS = (*LOADERS, "synthetic")


def load(fmt: str, path: str | Path | None, synthetic: SyntheticSpec | None = None) -> SourceData:
    """Load ``path`` in format ``fmt``; ``synthetic`` generates instead (no path needed)."""
    if fmt == "synthetic":
        return generate(synthetic or SyntheticSpec())
    if fmt not in LOADERS:
        raise RecflError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if path is None:
        raise RecflError(f"format {fmt!r} needs --path")
    return LOADERS[fmt](Path(path))


__all__ = ["FORMATS", "LABEL_RULES", "SourceData", "SyntheticSpec", "load"]
