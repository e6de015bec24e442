"""What a model kind is and does, declared once on its class: the model protocol and the ``MODELS`` registry.

As timm's models carry their own configuration, every model class states what it needs and does in a
:class:`ModelSpec` (``spec``), and every layer asks the class instead of comparing ``model.kind`` with a name:

=====================  ==================================================================================
who asks               what for
=====================  ==================================================================================
config validation      cached features needed, the reference branches it can build, the least batch size,
                       its own checks (:meth:`STModel.check_config`), the options it ignores (warned)
preprocessing          whether its slides need the spot graph (:meth:`STModel.needs_graph`)
the training job       the :class:`~stgraph.training.Trainer`'s epochs, or one call of ``fit(slides)``
evaluation             whether ``train.seed`` changes the fit (a seed-free fit is evaluated once)
prediction             retrieval from the reference, or expression predicted by the model; what the
                       output records
the CLI                what to report after training; which prediction options apply
=====================  ==================================================================================

A model kind is one class, one file and one decorator::

    @MODELS.register("my_regressor")
    class MyRegressor(STModel):
        spec = ModelSpec(training="fit", output="expression", cached_features=True, seeded=False)

        @classmethod
        def from_config(cls, config, spot_in_dim, image_encoder): ...
        def fit(self, slides): ...                 # PreparedSlide list (features, expr, edge_index)
        def predict_prepared(self, slide): ...     # one PreparedSlide → (n, G) expression
        def encode_image(self, batch): ...         # → object with .emb (n, d): the reference embeddings

The registry refuses, when the class is registered, an entry that does not declare a valid spec or lacks
the methods its spec implies.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..registry import Registry

__all__ = ["ModelSpec", "STModel", "MODELS", "ModelRegistry", "RETRIEVAL_OPTIONS",
           "TRAINER_OPTIONS", "TWO_BRANCH_OPTIONS"]

Training = Literal["trainer", "fit"]
Output = Literal["retrieval", "expression"]

#: Config options that only retrieval from the reference reads (kNN).
RETRIEVAL_OPTIONS = ("inference.k", "inference.similarity", "inference.aggregation", "inference.distance",
                     "inference.backend", "inference.backend_options", "inference.similarity_options",
                     "inference.aggregation_options", "inference.chunk_size")
#: Config options that only the gradient trainer (:class:`~stgraph.training.Trainer`) reads.
TRAINER_OPTIONS = ("train.optimizer", "train.lr", "train.weight_decay", "train.batch_size", "train.epochs",
                   "train.batching", "train.within_slide", "train.val_fraction", "train.val_slide",
                   "train.augment", "train.paired_augment", "train.color_jitter", "train.grad_clip",
                   "train.precision", "train.num_workers", "train.pin_memory", "train.channels_last",
                   "train.accumulate", "loss")
#: Config options of the two-branch (image + spot) joint space.
TWO_BRANCH_OPTIONS = ("model.embed_dim", "model.image_dgi", "model.image_head_dropout", "model.spot_input",
                      "model.pca_components", "model.spot_encoder", "model.spot_dgi", "model.spot_head_dropout",
                      "model.hsic")


@dataclass(frozen=True)
class ModelSpec:
    """What a model kind needs and does.

    Parameters
    ----------
    training
        ``"trainer"``: epochs of gradient steps by the :class:`~stgraph.training.Trainer` (checkpoints, resume,
        ``log.csv``, data-parallel processes), on the two-branch batches of
        :class:`~stgraph.models.ContrastiveSTModel`; ``"fit"``: one call of ``model.fit(prepared_slides)``
        (closed form, or the model's own loop), nothing to resume.
    output
        ``"retrieval"``: query embeddings are matched against the reference (kNN, ``inference.*``);
        ``"expression"``: ``model.predict_prepared(slide)`` predicts expression itself.
    cached_features
        Fits on cached frozen backbone features (needs ``model.image_encoder.cache_features`` and
        ``freeze: all``).
    seeded
        ``train.seed`` changes the fit (a seed-free fit is trained once however many seeds are asked for).
    min_batch_size
        The least ``train.batch_size`` that makes sense (2 for a contrastive loss over a batch).
    reference
        The ``inference.reference`` branches it can store embeddings of.
    ignores
        Config options (dotted paths or section prefixes) the kind never reads: a value other than the
        default is warned about when a config is loaded, with :attr:`ignores_why`.
    ignores_why
        Why (one clause), e.g. ``"the ridge is fitted in closed form and predicts without retrieval"``.
    """

    training: Training = "trainer"
    output: Output = "retrieval"
    cached_features: bool = False
    seeded: bool = True
    min_batch_size: int = 1
    reference: tuple = ("spot", "image")
    ignores: tuple = ()
    ignores_why: str = ""

    def __post_init__(self):
        if self.training not in ("trainer", "fit"):
            raise ValueError(f"ModelSpec.training must be 'trainer' or 'fit', got {self.training!r}")
        if self.output not in ("retrieval", "expression"):
            raise ValueError(f"ModelSpec.output must be 'retrieval' or 'expression', got {self.output!r}")
        if self.training == "trainer" and self.output != "retrieval":
            raise ValueError("ModelSpec: the Trainer trains the two-branch joint space, whose output is retrieval; "
                             "a model that predicts expression is trained by its own fit (training='fit')")
        if not (isinstance(self.min_batch_size, int) and self.min_batch_size >= 1):
            raise ValueError(f"ModelSpec.min_batch_size must be an integer ≥ 1, got {self.min_batch_size!r}")
        if not self.reference or any(b not in ("spot", "image") for b in self.reference):
            raise ValueError(f"ModelSpec.reference must name 'spot' and/or 'image', got {self.reference!r}")

    @property
    def retrieves(self) -> bool:
        """Whether predictions are retrieved from the reference (kNN)."""
        return self.output == "retrieval"

    @property
    def trainer(self) -> bool:
        """Whether the gradient :class:`~stgraph.training.Trainer` trains it (else one ``fit`` call)."""
        return self.training == "trainer"


class STModel(nn.Module):
    """Base of every model kind: the protocol above. Subclasses set :attr:`spec` and :meth:`from_config`,
    and the methods their spec implies (``fit`` for ``training="fit"``, ``predict_prepared`` for
    ``output="expression"``, ``encode_image`` always: the reference holds its embeddings)."""

    spec: ClassVar[ModelSpec]

    @classmethod
    def from_config(cls, config, spot_in_dim: int, image_encoder: nn.Module) -> "STModel":
        """Build the model from a validated :class:`~stgraph.config.Config`."""
        raise NotImplementedError

    @classmethod
    def check_config(cls, config) -> None:
        """The kind's own load-time checks (raise :class:`~stgraph.config.ConfigError`); none by default."""

    @classmethod
    def needs_graph(cls, config, query: bool = False) -> bool:
        """Whether the model itself reads each slide's spot graph: in training (``query=False``, which
        includes the reference slides) or on a query slide. Feature views and smoothing that need it are
        added by :func:`stgraph.preprocess.prepare.needs_graph`."""
        return False

    @property
    def choices(self) -> dict:
        """What the fit chose (e.g. the ridge's λ and rank), for ``run.json`` and the log; ``{}`` when nothing."""
        return {}

    def out_of_slide(self):
        """After ``fit``: (N, G) predictions of the training rows, each slide by the model fitted without it
        (in the order of the slides given to ``fit``), when the fit made them anyway (a nested choice);
        ``None`` otherwise, and the training job fits once more per training slide to get them
        (:mod:`stgraph.trust`)."""
        return None

    @property
    def out_of_slide_method(self) -> str:
        """How :meth:`out_of_slide`'s predictions were made (recorded in the trust record)."""
        return "refitted per held-out training slide"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A buffer registered empty and filled by a fit takes the checkpoint's shape (on its own device).
        for name, buf in self._buffers.items():
            saved = state_dict.get(prefix + name)
            if buf is not None and buf.numel() == 0 and saved is not None and saved.shape != buf.shape:
                self._buffers[name] = torch.empty(saved.shape, dtype=buf.dtype, device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


#: Methods each spec implies, checked when a class is registered.
def _required_methods(spec: ModelSpec) -> list[str]:
    out = ["from_config", "encode_image"]
    if spec.training == "fit":
        out.append("fit")
    if spec.output == "expression":
        out.append("predict_prepared")
    if spec.training == "trainer" or "spot" in spec.reference:
        out.append("encode_spot")
    return out


class ModelRegistry(Registry):
    """:class:`~stgraph.registry.Registry` of model classes: an entry declares a :class:`ModelSpec` and
    is built by its ``from_config(config, spot_in_dim, image_encoder)``; its options are that method's."""

    def register(self, name: str, obj=None):
        outer = super().register(name)

        def decorator(cls):
            self.validate_entry(name, cls)
            return outer(cls)

        return decorator if obj is None else decorator(obj)

    def validate_entry(self, name: str, cls) -> None:
        """Refuse an entry that is not a class with a :class:`ModelSpec` and the methods it implies."""
        where = f"model kind {name!r} ({getattr(cls, '__qualname__', cls)!r})"
        if not inspect.isclass(cls) or not issubclass(cls, nn.Module):
            raise TypeError(f"{where}: register an nn.Module class (stgraph.models.STModel) declaring `spec`, "
                            "not a builder function")
        spec = getattr(cls, "spec", None)
        if not isinstance(spec, ModelSpec):
            raise TypeError(f"{where}: declares no `spec = ModelSpec(...)` (what it needs and does: "
                            "training 'trainer'|'fit', output 'retrieval'|'expression', ...)")
        missing = [m for m in _required_methods(spec) if not callable(getattr(cls, m, None))
                   or getattr(cls, m) is getattr(STModel, m, None)]
        if missing:
            raise TypeError(f"{where}: its spec (training={spec.training!r}, output={spec.output!r}) needs "
                            f"method(s) {missing}")

    def create(self, name: str, **kwargs):
        return self.get(name).from_config(**kwargs)

    def _parameters(self, name: str) -> list[inspect.Parameter]:
        try:
            return list(inspect.signature(self.get(name).from_config).parameters.values())
        except (TypeError, ValueError):
            return []


#: ``model.kind`` → model class (:class:`STModel` with a :class:`ModelSpec`).
MODELS: ModelRegistry = ModelRegistry("model kind", inputs=("config", "spot_in_dim", "image_encoder"))
