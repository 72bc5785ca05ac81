"""The arms of the A/B comparison, typed: which model each scores and what each device does first.

One registry for every layer (the pipeline's stages, ``recfl personalize``, the device loop, the tools),
so the code branches on an arm's properties, never on its name; the names are what config, CLI,
``run.json`` and the report show.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from recfl.core.errors import RecflError


@dataclass(frozen=True)
class Arm:
    """One arm: a global model scored unchanged (``model``), or the run's starting model (``run.personalize_from``)
    fine-tuned on each device on the user's own events, with matched pool samples (``candidates``) that the
    device's sample filter may thin (``filtered``)."""

    name: str
    model: str | None = None  # the ``recfl run`` stage whose global model it scores unchanged; None: personalized
    candidates: bool = False  # fine-tunes on matched pool samples too (needs a pool and its candidates)
    filtered: bool = False  # keeps only the candidates the device's sample filter accepts

    def __post_init__(self):
        if (self.candidates and not self.personalized) or (self.filtered and not self.candidates):
            raise ValueError(f"arm {self.name!r}: only a personalized arm takes candidates, only one with candidates filters")

    @property
    def personalized(self) -> bool:
        """Fine-tuned on each device (a checkpoint and report row per device) rather than scored as it is."""
        return self.model is None


CLOUD = Arm("cloud", model="cloud_model")
FEDAVG = Arm("fedavg", model="fedavg")
FEDSUBAVG = Arm("fedsubavg", model="fedsubavg")
LOCAL = Arm("local")
CODA_NOFILTER = Arm("coda-nofilter", candidates=True)
CODA = Arm("coda", candidates=True, filtered=True)

CONTROL = CLOUD  # what ``recfl run``'s report compares every other arm with
ARMS = (CLOUD, FEDAVG, FEDSUBAVG, LOCAL, CODA_NOFILTER, CODA)  # report order (and the order of run.json's arm stages)
# what ``recfl personalize --arm`` runs: scoring a global model unchanged is the control's device work, whichever
# model ``--model`` gives (``recfl run``'s federated arms are that work on their own models)
DEVICE_ARMS = tuple(arm for arm in ARMS if arm is CONTROL or arm.personalized)


def names(arms: Iterable[Arm] = ARMS) -> tuple[str, ...]:
    """The arms' names, in their order."""
    return tuple(arm.name for arm in arms)


def arm_named(name: str, among: tuple[Arm, ...] = ARMS) -> Arm:
    """The arm called ``name`` among ``among``; a user mistake (:class:`RecflError` listing the choices) if none is."""
    for arm in among:
        if arm.name == name:
            return arm
    raise RecflError(f"unknown arm {name!r}; choose one of {', '.join(names(among))}")
