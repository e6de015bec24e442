"""Small synthetic slides with real image → expression signal, for tests and examples.

Each slide is a square spot grid over a procedurally drawn "H&E-like" RGB image made of a few tissue
domains. Every domain has its own colour and texture, and its own expression programme, so an image model
can learn expression from the image alone, and neighbouring spots share expression (spatial structure).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from ..keys import Key

__all__ = ["make_synthetic_slide", "make_synthetic_collection"]

_DOMAIN_COLOURS = np.array(
    [[200, 120, 170], [120, 60, 140], [235, 190, 210], [150, 90, 110], [90, 40, 120]], dtype=np.float32
)


def _domain_map(n_rows: int, n_cols: int, n_domains: int, rng: np.random.Generator) -> np.ndarray:
    """Assign each grid cell to the nearest of ``n_domains`` random seeds (Voronoi domains)."""
    seeds = rng.uniform(0, 1, size=(n_domains, 2)) * [n_rows, n_cols]
    rr, cc = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    grid = np.stack([rr.ravel(), cc.ravel()], 1)
    d = ((grid[:, None, :] - seeds[None]) ** 2).sum(-1)
    return d.argmin(1).reshape(n_rows, n_cols)


def make_synthetic_slide(
    n_rows: int = 12,
    n_cols: int = 12,
    n_genes: int = 60,
    n_domains: int = 3,
    spacing: int = 32,
    seed: int = 0,
    slide_id: str = "synthetic",
    programmes_seed: int = 1234,
) -> AnnData:
    """Make one synthetic slide following the stgraph AnnData convention.

    Parameters
    ----------
    n_rows, n_cols
        Spot grid shape; spots sit ``spacing`` pixels apart (``n_rows * n_cols`` spots).
    n_genes
        Number of genes; ``gene_0 … gene_{n-1}``.
    n_domains
        Number of tissue domains; each has a colour/texture and an expression programme.
    spacing
        Centre-to-centre spot distance in full-resolution pixels.
    seed
        Seed for the layout, the image noise and the counts of this slide.
    programmes_seed
        Seed for the domain expression programmes and colours; slides that share it share biology.

    Returns
    -------
    AnnData
        ``X`` raw counts (CSR, float32), ``obsm['spatial']`` (n_spots, 2) pixel x/y, ``obs`` with
        ``array_row``, ``array_col``, ``domain`` and ``slide_id``, and the full-resolution image in
        ``uns['spatial'][slide_id]['images']['fullres']`` (H, W, 3) uint8 with scalefactor 1.
    """
    rng = np.random.default_rng(seed)
    prog_rng = np.random.default_rng(programmes_seed)
    programmes = prog_rng.gamma(0.6, 4.0, size=(n_domains, n_genes)).astype(np.float32)
    colours = _DOMAIN_COLOURS[np.arange(n_domains) % len(_DOMAIN_COLOURS)]

    domains = _domain_map(n_rows, n_cols, n_domains, rng)
    margin = spacing
    height, width = n_rows * spacing + 2 * margin, n_cols * spacing + 2 * margin

    # Image: per-pixel domain (nearest spot's domain), domain colour, domain-specific stripe texture, noise.
    yy, xx = np.mgrid[0:height, 0:width]
    row_of_px = np.clip((yy - margin) // spacing, 0, n_rows - 1)
    col_of_px = np.clip((xx - margin) // spacing, 0, n_cols - 1)
    px_domain = domains[row_of_px, col_of_px]
    texture = np.sin((xx + (px_domain + 1) * yy) * (0.25 + 0.3 * px_domain))[..., None] * 25.0
    image = colours[px_domain] + texture + rng.normal(0, 12, size=(height, width, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)

    rows, cols = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    xy = np.stack([margin + cols * spacing + spacing // 2, margin + rows * spacing + spacing // 2], 1)
    spot_domain = domains[rows, cols]

    # Expression: the domain programme, smoothed slightly by the neighbours' domains, times a library size.
    onehot = np.eye(n_domains, dtype=np.float32)[domains]
    padded = np.pad(onehot, ((1, 1), (1, 1), (0, 0)), mode="edge")
    smooth = sum(padded[1 + dr : 1 + dr + n_rows, 1 + dc : 1 + dc + n_cols] for dr in (-1, 0, 1) for dc in (-1, 0, 1)) / 9.0
    mix = 0.6 * onehot + 0.4 * smooth
    rate = mix.reshape(-1, n_domains) @ programmes
    library = rng.lognormal(0.0, 0.2, size=(len(rows), 1))
    counts = rng.poisson(rate * library).astype(np.float32)

    barcodes = [f"{c}x{r}" for r, c in zip(rows, cols)]
    obs = pd.DataFrame(
        {
            "array_row": rows.astype(int),
            "array_col": cols.astype(int),
            "domain": pd.Categorical(spot_domain.astype(str)),
            "slide_id": pd.Categorical([slide_id] * len(rows)),
        },
        index=barcodes,
    )
    var = pd.DataFrame(index=[f"gene_{i}" for i in range(n_genes)])
    adata = AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    adata.obsm[Key.obsm.spatial] = xy.astype(np.float64)
    adata.uns[Key.uns.spatial] = {
        slide_id: {
            Key.uns.images: {"fullres": image},
            Key.uns.scalefactors: {
                Key.scalefactor.fullres: 1.0,
                Key.scalefactor.spot_diameter: float(spacing) * 0.5,
            },
            Key.uns.metadata: {"source": "synthetic"},
        }
    }
    return adata


def make_synthetic_collection(n_slides: int = 3, seed: int = 0, **kwargs) -> list[AnnData]:
    """Several synthetic slides that share expression programmes (same biology, different layouts)."""
    return [
        make_synthetic_slide(seed=seed + i, slide_id=f"slide{i}", **kwargs) for i in range(n_slides)
    ]
