"""stgraph: predict spatially resolved gene expression from H&E histology.

Spatially aware contrastive models (BLEEP, HECLIP, mclSTExp, ST-GCHB) as configurations of one framework:
``data`` (readers, preprocessing, patches) → ``graph`` (spot graphs) → ``nn``/``models`` (encoders, heads)
→ ``losses`` → ``training`` → ``inference`` (reference + kNN imputation) → ``metrics``/``evaluation``.

The top-level API (scanpy-style; each name is imported on first use, so ``import stgraph`` stays fast and
imports neither torch nor anndata):

==========================  =================================================================================
``stgraph.read_slide``      read one slide (any registered format, auto-detected) → AnnData
``stgraph.read_her2st``     read one HER2+ section (``root``, ``section``) → AnnData
``stgraph.SlideCollection`` several slides keyed by slide id
``stgraph.load_config``     a YAML config with dotted overrides → :class:`~stgraph.config.Config`
``stgraph.train``           :func:`~stgraph.training.train_model`: config + slides → a run folder, a ``Run``
``stgraph.load_run``        a run folder → :class:`~stgraph.runfolder.Run`
``stgraph.predict``         :func:`~stgraph.inference.predict_slide`: ``Run`` + slide → predicted AnnData
``stgraph.predict_wsi``     :func:`~stgraph.inference.wsi.predict_wsi`: ``Run`` + whole-slide image → AnnData
``stgraph.write_prediction``  a prediction → ``.h5ad`` (or ``.csv`` / ``.parquet`` / SpatialData ``.zarr``)
``stgraph.write_spatialdata``  a prediction → a SpatialData ``.zarr`` store (H&E, shapes, table)
``stgraph.extend_reference``  add slides with expression to a run's reference, no retraining
``stgraph.make_folds``      leave-one-section-out (or patient-aware) folds of slide ids
``stgraph.evaluate``        :func:`~stgraph.evaluation.cross_validate`: configs × folds (+ baselines) → table
``stgraph.pp``              preprocessing verbs (:mod:`stgraph.data.pp`)
``stgraph.pl``              plots (:mod:`stgraph.pl`)
``stgraph.metrics``         metrics (:mod:`stgraph.metrics`)
==========================  =================================================================================
"""
from typing import TYPE_CHECKING as _TYPE_CHECKING

__version__ = "0.1.0"

#: Top-level name → (module, attribute in it; ``None``: the module itself).
_API = {
    "read_slide": ("stgraph.data.readers", "read_slide"),
    "read_her2st": ("stgraph.data.readers", "read_her2st"),
    "SlideCollection": ("stgraph.data.collection", "SlideCollection"),
    "load_config": ("stgraph.config", "load_config"),
    "train": ("stgraph.training.job", "train_model"),
    "load_run": ("stgraph.runfolder", "load_run"),
    "predict": ("stgraph.inference.predict", "predict_slide"),
    "predict_wsi": ("stgraph.inference.wsi", "predict_wsi"),
    "write_prediction": ("stgraph.inference.predict", "write_prediction"),
    "write_spatialdata": ("stgraph.inference.spatialdata_out", "write_spatialdata"),
    "extend_reference": ("stgraph.inference.predict", "extend_reference"),
    "make_folds": ("stgraph.evaluation.folds", "make_folds"),
    "evaluate": ("stgraph.evaluation.protocol", "cross_validate"),
    "pp": ("stgraph.data.pp", None),
    "pl": ("stgraph.pl", None),
    "metrics": ("stgraph.metrics", None),
}

__all__ = ["__version__", *_API]

if _TYPE_CHECKING:  # for type checkers and IDEs; at run time each name is imported on first use
    from . import metrics, pl
    from .config import load_config
    from .data import pp
    from .data.collection import SlideCollection
    from .data.readers import read_her2st, read_slide
    from .evaluation.folds import make_folds
    from .evaluation.protocol import cross_validate as evaluate
    from .inference.predict import extend_reference, write_prediction
    from .inference.predict import predict_slide as predict
    from .inference.spatialdata_out import write_spatialdata
    from .inference.wsi import predict_wsi
    from .runfolder import load_run
    from .training.job import train_model as train


def __getattr__(name: str):
    """Import a top-level name on first use (PEP 562) and keep it."""
    try:
        module, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'stgraph' has no attribute {name!r}") from None
    import importlib

    value = importlib.import_module(module)
    if attr is not None:
        value = getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({n for n in globals() if not n.startswith("_")} | set(__all__))
