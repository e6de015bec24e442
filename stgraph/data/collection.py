"""``SlideCollection``: an ordered mapping slide id → AnnData (one slide each)."""
from __future__ import annotations

import os
from typing import Iterable, Iterator, Mapping, Sequence, Union

import pandas as pd
from anndata import AnnData

from .readers import HER2ST_IMAGED_SECTIONS, read_her2st, read_slide
from .slide_id import set_slide_id, slide_id_of
from ..keys import Key

__all__ = ["SlideCollection", "slide_id_of"]


_set_slide_id = set_slide_id


class SlideCollection(Mapping[str, AnnData]):
    """Slides keyed by their unique id, in insertion order.

    Parameters
    ----------
    slides
        AnnData objects (ids from ``obs['slide_id']``), or a mapping id → AnnData (a slide without
        ``obs['slide_id']`` gets the key; one whose id differs from its key is an error).

    Examples
    --------
    >>> col = SlideCollection.from_her2st("../shared/data/her2st")      # doctest: +SKIP
    >>> train, test = col.without("C6"), col["C6"]                      # doctest: +SKIP
    """

    def __init__(self, slides: Union[Iterable[AnnData], Mapping[str, AnnData]] = ()):
        self._slides: dict[str, AnnData] = {}
        items = slides.items() if isinstance(slides, Mapping) else ((None, ad) for ad in slides)
        for key, adata in items:
            if not isinstance(adata, AnnData):
                raise TypeError(f"a SlideCollection holds AnnData objects, got {type(adata).__name__}")
            if key is None:
                sid = slide_id_of(adata)
            else:
                sid = str(key)
                if Key.obs.slide_id not in adata.obs:
                    _set_slide_id(adata, sid)
                elif slide_id_of(adata) != sid:
                    raise ValueError(f"slide keyed {sid!r} has obs['slide_id'] = {slide_id_of(adata)!r}")
            if sid in self._slides:
                raise ValueError(f"duplicate slide id {sid!r}: slide ids must be unique in a collection")
            self._slides[sid] = adata

    # mapping protocol ---------------------------------------------------------------------------
    def __getitem__(self, slide_id: str) -> AnnData:
        try:
            return self._slides[slide_id]
        except KeyError:
            raise KeyError(f"no slide {slide_id!r}; the collection holds {self.ids}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._slides)

    def __len__(self) -> int:
        return len(self._slides)

    def __repr__(self) -> str:
        parts = ", ".join(f"{sid}: {ad.n_obs}×{ad.n_vars}" for sid, ad in self._slides.items())
        return f"SlideCollection({parts})"

    # views ------------------------------------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        """Slide ids in order."""
        return list(self._slides)

    @property
    def slides(self) -> list[AnnData]:
        """Slides in order."""
        return list(self._slides.values())

    def subset(self, ids: Sequence[str]) -> "SlideCollection":
        """A collection of ``ids`` (in the given order; same AnnData objects)."""
        if isinstance(ids, str):
            ids = [ids]
        return SlideCollection({sid: self[sid] for sid in ids})

    def without(self, slide_id: Union[str, Sequence[str]]) -> "SlideCollection":
        """All slides but ``slide_id`` (one id or several) — e.g. the training slides of a fold."""
        drop = {slide_id} if isinstance(slide_id, str) else set(slide_id)
        for sid in drop:
            self[sid]  # raises a KeyError naming the ids when unknown
        return SlideCollection({sid: ad for sid, ad in self._slides.items() if sid not in drop})

    def concat(self, join: str = "inner") -> AnnData:
        """One AnnData of all slides.

        ``obs['slide_id']`` is categorical (categories in collection order), spot names become
        ``<barcode>-<slide_id>``, ``uns['spatial']`` holds every slide's library, genes are the
        intersection (``join='inner'``) or union (``'outer'``, missing = 0).
        """
        import anndata

        if not self._slides:
            raise ValueError("cannot concatenate an empty collection")
        out = anndata.concat(self._slides, join=join, label="slide_id", index_unique="-", fill_value=0,
                             merge="same")
        out.obs[Key.obs.slide_id] = pd.Categorical(out.obs[Key.obs.slide_id].astype(str), categories=self.ids)
        out.uns[Key.uns.spatial] = {lib: entry for ad in self.slides for lib, entry in ad.uns.get(Key.uns.spatial, {}).items()}
        return out

    # constructors -----------------------------------------------------------------------------------
    @classmethod
    def from_her2st(cls, root: Union[str, os.PathLike], sections: Sequence[str] = HER2ST_IMAGED_SECTIONS,
                    **kwargs) -> "SlideCollection":
        """Read HER2+ sections (default: the six imaged ones) with :func:`~stgraph.data.readers.read_her2st`."""
        return cls(read_her2st(root, s, **kwargs) for s in sections)
