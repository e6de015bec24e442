"""Data layer: readers (slides → AnnData), collections, preprocessing, patches and array transforms."""
from . import pp
from .collection import SlideCollection, slide_id_of
from .feature_store import FeatureStore
from .lazy_collection import LazySlideCollection
from .errors import SlideFormatError
from .image import load_fullres_image
from .patches import extract_patches
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomFlipRotate,
    array_coordinates,
    hash_array,
    imagenet_normalize,
    random_flip_rotate,
)
from .readers import (
    HER2ST_IMAGED_SECTIONS,
    read_h5ad,
    read_her2st,
    read_slide,
    read_spot_csv,
    read_st_legacy,
    read_visium,
    validate_slide,
)
from .synthetic import make_synthetic_collection, make_synthetic_slide

__all__ = [
    "FeatureStore",
    "LazySlideCollection",
    "pp",
    "SlideCollection",
    "slide_id_of",
    "array_coordinates",
    "hash_array",
    "SlideFormatError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RandomFlipRotate",
    "extract_patches",
    "imagenet_normalize",
    "load_fullres_image",
    "random_flip_rotate",
    "HER2ST_IMAGED_SECTIONS",
    "read_h5ad",
    "read_her2st",
    "read_slide",
    "read_spot_csv",
    "read_st_legacy",
    "read_visium",
    "validate_slide",
    "make_synthetic_slide",
    "make_synthetic_collection",
]
