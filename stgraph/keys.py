"""Every AnnData key stgraph reads or writes, in one place (as squidpy's ``_constants``).

>>> adata.obsm[Key.obsm.spatial]          # (n, 2) x, y in full-resolution pixels
>>> adata.uns[Key.uns.spatial][library_id][Key.uns.scalefactors][Key.scalefactor.hires]

The values are the scanpy / squidpy conventions, so a slide read here plots with ``sc.pl.spatial`` and
``sq.pl.spatial_scatter`` unchanged.
"""
from __future__ import annotations

__all__ = ["Key"]


class _Obs:
    slide_id = "slide_id"          # categorical, one value per slide (= library id)
    array_row = "array_row"        # integer grid row
    array_col = "array_col"        # integer grid column
    in_tissue = "in_tissue"
    ood_score = "ood_score"        # distance to the training spots over the typical unseen-slide distance (trust)
    in_distribution = "in_distribution"  # bool: within the training slides' own out-of-slide distances
    filtered_barcodes = "filtered_barcodes"   # Space Ranger raw matrix: barcode passed filtering
    unit_area_px2 = "unit_area_px2"  # area of a cell/bin polygon, full-resolution px² (SpatialData reader)
    unit_area_um2 = "unit_area_um2"  # the same in µm², when the pixel size is known
    n_units = "n_units"            # units (cells, bins, spots) pooled into a pseudo-spot


class _Obsm:
    spatial = "spatial"            # (n, 2) spot centres x, y in full-resolution pixels
    embedding = "X_stgraph"        # (n, d) joint-space embedding of a predicted slide
    reference_embedding = "X_emb"  # the reference store as AnnData
    pca = "X_pca"
    pca_harmony = "X_pca_harmony"


class _Var:
    gene_ids = "gene_ids"
    expected_r = "expected_r"              # per-gene Pearson r expected on an unseen slide (trust)
    expected_r_sd = "expected_r_sd"        # its spread over the held-out training slides
    expected_r_slide = "expected_r_slide"  # the expectation adjusted to this slide's predicted variation
    reliable = "reliable"                  # bool: both expectations reach trust.reliable_r
    train_low = "train_q01"                # the training values' 1st percentile (the gene's usual range)
    train_high = "train_q99"               # and 99th percentile
    filtered_probes = "filtered_probes"   # Visium probe-based matrix: probe passed filtering


class _Obsp:
    connectivities = "spatial_connectivities"
    distances = "spatial_distances"


class _Layers:
    counts = "counts"              # raw counts kept by preprocessing
    lower = "lower"                # per-spot prediction interval (trust), at uns['stgraph']['interval_level']
    upper = "upper"


class _Uns:
    spatial = "spatial"            # uns['spatial'][library_id] = {images, scalefactors, metadata}
    images = "images"
    scalefactors = "scalefactors"
    metadata = "metadata"
    stgraph = "stgraph"            # provenance of a prediction
    source_slide = "source_slide"  # uns['stgraph']['source_slide']: {slide: path} or {her2st: root, section: id}
    spatial_neighbors = "spatial_neighbors"   # squidpy: parameters of the spot graph
    reference = "reference"        # the reference store as AnnData: kind and meta
    normalised = "stgraph_normalised"  # target_sum of pp.normalize_log1p: X is log1p(counts per target_sum)


class _Image:
    hires = "hires"
    lowres = "lowres"
    fullres = "fullres"


class _ScaleFactor:
    hires = "tissue_hires_scalef"
    lowres = "tissue_lowres_scalef"
    fullres = "tissue_fullres_scalef"
    spot_diameter = "spot_diameter_fullres"


class _Metadata:
    source_image_path = "source_image_path"
    microns_per_pixel = "microns_per_pixel"
    fullres_shape = "fullres_shape"
    unit_shape = "unit_shape"      # what a unit is: "circle" (spot), "square" (bin) or "polygon" (cell)
    bin_size_px = "bin_size_px"    # side of a square bin, full-resolution px
    bin_size_um = "bin_size_um"    # side of a square bin, µm (Visium HD, SpatialData squares with a known pixel size)
    pool_um = "pool_um"            # side of a pooled pseudo-spot, µm (Visium HD bins, pp.pool_pseudospots)
    grid_lattice = "grid_lattice"  # whole-slide grid: "hex" or "square"
    grid_pitch_um = "grid_pitch_um"  # whole-slide grid: centre-to-centre distance, µm
    source_store = "source_store"  # the SpatialData .zarr store a slide was read from


class Key:
    """AnnData keys by slot: ``Key.obs``, ``Key.var``, ``Key.obsm``, ``Key.obsp``, ``Key.layers``, ``Key.uns``,
    ``Key.image`` (names in ``images``), ``Key.scalefactor``, ``Key.metadata``."""

    obs = _Obs
    obsm = _Obsm
    var = _Var
    obsp = _Obsp
    layers = _Layers
    uns = _Uns
    image = _Image
    scalefactor = _ScaleFactor
    metadata = _Metadata
