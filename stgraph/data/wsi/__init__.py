"""Whole-slide images: reading (:mod:`.image`: :class:`WSIImage`, resampling to a pixel size), the two readers
(:mod:`.backends`: tifffile, openslide), pixel size from metadata (:mod:`.mpp`), tissue detection
(:mod:`.tissue`) and the spot grid laid over the tissue (:mod:`.grid`). See docs/wsi.md."""
from .backends import WSI_SUFFIXES, openslide_available
from .grid import GRID_KINDS, SpotGrid, grid_to_anndata, spot_grid, wsi_spot_grid
from .image import WSIImage, iter_patches_at_mpp, level_for_mpp, open_wsi, read_region_at_mpp
from .mpp import mpp_from_aperio_description, mpp_from_ome_xml, mpp_from_tiff_resolution
from .tissue import NoTissueError, saturation, tissue_mask

__all__ = [
    "GRID_KINDS",
    "NoTissueError",
    "SpotGrid",
    "WSIImage",
    "WSI_SUFFIXES",
    "grid_to_anndata",
    "iter_patches_at_mpp",
    "level_for_mpp",
    "mpp_from_aperio_description",
    "mpp_from_ome_xml",
    "mpp_from_tiff_resolution",
    "open_wsi",
    "openslide_available",
    "read_region_at_mpp",
    "saturation",
    "spot_grid",
    "tissue_mask",
    "wsi_spot_grid",
]
