"""Cross-validation folds over a slide collection."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from ..errors import StgraphError

__all__ = ["Fold", "make_folds", "her2st_patient", "select_folds", "FoldSelectionError"]


class Fold(tuple):
    """``(name, train_ids, test_ids)``."""

    def __new__(cls, name: str, train_ids: Sequence[str], test_ids: Sequence[str]):
        return super().__new__(cls, (name, list(train_ids), list(test_ids)))

    def __getnewargs__(self):  # pickling (evaluation worker processes)
        return tuple(self)

    name = property(lambda self: self[0])
    train_ids = property(lambda self: self[1])
    test_ids = property(lambda self: self[2])


def her2st_patient(slide_id: str) -> str:
    """HER2+ section ids start with the patient letter (``B4`` → ``B``)."""
    return slide_id[0]


def make_folds(slide_ids: Sequence[str], scheme: str = "loso",
               patient_of: Optional[Callable[[str], str]] = None) -> list[Fold]:
    """Folds for ``loso`` (leave one section out) or ``patient`` (leave one section out and drop the other
    sections of its patient from training, since sections of one patient are near-duplicates).

    A ``patient`` fold whose patient holds every slide has no training data and is skipped.
    """
    ids = list(slide_ids)
    if len(ids) < 2:
        raise ValueError(f"cross-validation needs at least two slides, got {ids}")
    if scheme == "loso":
        return [Fold(t, [s for s in ids if s != t], [t]) for t in ids]
    if scheme == "patient":
        patient_of = patient_of or her2st_patient
        folds = []
        for t in ids:
            train = [s for s in ids if patient_of(s) != patient_of(t)]
            if train:
                folds.append(Fold(t, train, [t]))
        if not folds:
            raise ValueError("patient-aware folds: every slide comes from the same patient")
        return folds
    raise ValueError(f"unknown fold scheme {scheme!r}; valid choices: ['loso', 'patient']")


class FoldSelectionError(StgraphError, KeyError):
    """``--only-folds`` names a fold that does not exist."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


def select_folds(folds: Sequence[Fold], names: Optional[Sequence[str]]) -> list[Fold]:
    """The folds named in ``names`` (``None``: all), in their order; an unknown name is refused with the valid
    ones (before anything is trained)."""
    if not names:
        return list(folds)
    valid = [f.name for f in folds]
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise FoldSelectionError(f"--only-folds {unknown}: no such fold; the folds are {valid}")
    return [f for f in folds if f.name in set(names)]
