"""The simulated device population: each client's local data, built on demand.

A client's raw events stay here; what the federated process sees of a
client is its :class:`ClientData` (the submodel rows it requests and its
localized examples), which is placed at ``tff.CLIENTS`` and never leaves
the client computation. Clients are encoded lazily, one round's sample at
a time, so populations of 100,000 users do not sit in memory as tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recfl.core.dataset import PreparedDataset
from recfl.core.features import Encoder, Examples
from recfl.core.models import ModelSpec
from recfl.core.submodel import Submodel


@dataclass(frozen=True)
class ClientData:
    """One device's training data in local coordinates, plus the rows it needs."""

    user_id: int
    submodel: Submodel
    examples: Examples  # localized to submodel rows

    @property
    def size(self) -> int:
        return len(self.examples)


class Population:
    """The clients of a simulation: users with training events, in a fixed order."""

    def __init__(self, data: PreparedDataset, spec: ModelSpec, users: np.ndarray | None = None):
        train = data.train if users is None else data.train[data.train["user_id"].isin(users)]
        self._events = train.sort_values(["user_id", "timestamp", "event_id"], kind="stable").reset_index(drop=True)
        user = self._events["user_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
        self.user_ids = user[starts]
        self._bounds = np.r_[starts, len(user)]
        self._encoder = Encoder(data.item_vocab, data.category_vocab, data.items, spec.features)
        self._spec, self._data = spec, data

    def __len__(self) -> int:
        return len(self.user_ids)

    def events(self, index: int) -> pd.DataFrame:
        return self._events.iloc[self._bounds[index] : self._bounds[index + 1]]

    def sizes(self) -> np.ndarray:
        """Training examples per client."""
        return np.diff(self._bounds)

    def clients(self, indices: np.ndarray, round_number: int | None = None) -> list[ClientData]:
        """The data of clients ``indices``: their events (plus, in round ``round_number``, sampled negatives
        drawn for that round when the data set's rule asks for them) encoded together with each user's own
        click history, then split per client. Without a round: the real events only (e.g. heat counts)."""
        if len(indices) == 0:
            return []
        events = pd.concat([self.events(i) for i in indices])
        if round_number is not None:
            events = self._data.with_training_negatives(events, ("federated", round_number))
        rank = pd.Index(self.user_ids[indices]).get_indexer(events["user_id"].to_numpy())  # client order
        order = np.argsort(rank, kind="stable")
        examples = self._encoder(events.iloc[order], events)
        bounds = np.searchsorted(rank[order], np.arange(len(indices) + 1))
        out = []
        for k, index in enumerate(indices):
            mine = examples.take(slice(bounds[k], bounds[k + 1]))
            submodel = Submodel.covering(self._spec, mine)
            out.append(ClientData(int(self.user_ids[index]), submodel, submodel.localize(mine)))
        return out
