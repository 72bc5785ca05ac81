"""MovieLens 100K and 1M.

Label rule: ``label = 1`` when the rating is >= 4, else 0 (ratings are real
exposures, so low ratings are genuine negatives). Categories are the
movie's genres (multi-valued; the first is the event's ``category_id``),
numbered as in MovieLens 100K's ``u.genre``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recfl.core.errors import DataFormatError, RecflError
from recfl.core.formats.base import (
    SourceData,
    drop_impossible_timestamps,
    integral,
    parse_delimited,
    read_delimited,
    read_text,
    require_file,
)
from recfl.core.schema import (
    NO_CATEGORY,
    assign_event_ids,
    conform,
    item_table,
    stable_id,
)

LABEL_RULE = "label = rating >= 4; categories = genres"
GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]
_GENRE_ID = {name: i for i, name in enumerate(GENRES)}


def _directory(path: Path, marker: str) -> Path:
    """Accept either the data set's directory or one of its files."""
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise RecflError(f"{path}: no such directory (expected a MovieLens folder with {marker})")
    return path


def _events(ratings: pd.DataFrame, path: Path, genres_of: dict[int, np.ndarray]) -> pd.DataFrame:
    rating = ratings["rating"].to_numpy()
    outside = np.flatnonzero((rating < 0.5) | (rating > 5))
    if outside.size:
        raise DataFormatError(path, f"rating {rating[outside[0]]!r} is outside 0.5..5", int(ratings["line"].iat[outside[0]]))
    items = integral(ratings, "item", path)
    first_genre = {i: (g[0] if g.size else NO_CATEGORY) for i, g in genres_of.items()}
    return pd.DataFrame({
        "user_id": integral(ratings, "user", path),
        "item_id": items,
        "category_id": np.array([first_genre.get(i, NO_CATEGORY) for i in items], dtype=np.int64),
        "label": (rating >= 4).astype(np.int8),
        "timestamp": integral(ratings, "timestamp", path),
        "behavior": [f"rating:{r:g}" for r in rating],
    })


def _finish(source: str, path: Path, events: pd.DataFrame, genres_of: dict[int, np.ndarray]) -> SourceData:
    dropped: dict[str, int] = {}
    events = drop_impossible_timestamps(conform(assign_event_ids(events, source)), dropped)
    seen = events["item_id"].unique()
    empty = np.array([], dtype=np.int64)
    items = item_table(pd.DataFrame({"item_id": seen, "categories": [genres_of.get(int(i), empty) for i in seen]}))
    return SourceData(source, str(path), LABEL_RULE, events, items, dropped)


def load_100k(path: str | Path) -> SourceData:
    """Read ``u.data`` (user, item, rating, ts; tab-separated) and ``u.item`` (latin-1, 19 genre flags)."""
    root = _directory(Path(path), "u.data and u.item")
    data_file = require_file(root / "u.data", "MovieLens 100K ratings u.data")
    genres_of = genres_100k(root)
    ratings = read_delimited(data_file, "\t", ["user", "item", "rating", "timestamp"], ["user", "item", "rating", "timestamp"])
    return _finish("movielens-100k", root, _events(ratings, data_file, genres_of), genres_of)


def genres_100k(root: Path) -> dict[int, np.ndarray]:
    """Genre ids of each movie in ``u.item`` (latin-1, 19 genre flags)."""
    item_file = require_file(root / "u.item", "MovieLens 100K movies u.item")
    names = ["item", "title", "release", "video_release", "url"] + [f"g{i}" for i in range(len(GENRES))]
    movies = read_delimited(item_file, "|", names, ["item"] + names[5:], encoding="latin-1")
    flags = movies[names[5:]].to_numpy() > 0
    return {int(i): np.flatnonzero(f).astype(np.int64) for i, f in zip(integral(movies, "item", item_file), flags)}


def load_1m(path: str | Path) -> SourceData:
    """Read ``ratings.dat`` and ``movies.dat`` (``::``-separated, latin-1); ``users.dat``, when present,
    is parsed as strictly and every rating's user must be listed in it (a truncated or mismatched copy)."""
    root = _directory(Path(path), "ratings.dat and movies.dat")
    data_file = require_file(root / "ratings.dat", "MovieLens 1M ratings.dat")
    genres_of = genres_1m(root)
    ratings = _read_double_colon(data_file, ["user", "item", "rating", "timestamp"], ["user", "item", "rating", "timestamp"])
    if (root / "users.dat").is_file():
        users_file = root / "users.dat"
        users = _read_double_colon(users_file, ["user", "gender", "age", "occupation", "zip"], ["user", "age", "occupation"])
        known = integral(users, "user", users_file)
        rated = integral(ratings, "user", data_file)
        missing = np.flatnonzero(~np.isin(rated, known))
        if missing.size:
            raise DataFormatError(data_file, f"user {rated[missing[0]]} is not in {users_file.name}",
                                  int(ratings["line"].iat[missing[0]]))
    return _finish("movielens-1m", root, _events(ratings, data_file, genres_of), genres_of)


def genres_1m(root: Path) -> dict[int, np.ndarray]:
    """Genre ids of each movie in ``movies.dat`` (``|``-separated genre names)."""
    movie_file = require_file(root / "movies.dat", "MovieLens 1M movies.dat")
    movies = _read_double_colon(movie_file, ["item", "title", "genres"], ["item"])
    return {
        int(i): np.array([_GENRE_ID.get(g, stable_id(g)) for g in text.split("|") if g], dtype=np.int64)
        for i, text in zip(integral(movies, "item", movie_file), movies["genres"])
    }


def _read_double_colon(path: Path, names: list[str], numeric: list[str]) -> pd.DataFrame:
    """MovieLens 1M's ``::`` separator, parsed through a one-character stand-in."""
    text = read_text(path, "latin-1")
    if "\x1f" in text:
        raise DataFormatError(path, "contains control character 0x1f, not a MovieLens .dat file")
    return parse_delimited(text.replace("::", "\x1f"), path, "\x1f", names, numeric, shown_sep="::")
