"""Embed prepared slides with a trained model (eval mode, no augmentation, no DGI corruption)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..data.transforms import normalize_batch, patch_batch
from .prepare import PreparedSlide

__all__ = ["embed_slide", "embed_slides"]


def _image_input(slide: "PreparedSlide", rows: slice, input_size: int, device) -> dict:
    if slide.features is not None:
        return {"features": torch.as_tensor(slide.features[rows], dtype=torch.float32, device=device)}
    if slide.stage_input is not None:
        return {"stage_input": torch.as_tensor(slide.stage_input[rows], dtype=torch.float32, device=device)}
    if slide.patches is None:
        raise ValueError(f"slide {slide.slide_id!r} has neither features nor patches")
    return {"patch": normalize_batch(patch_batch(slide.patches[rows], input_size, device))}


@torch.no_grad()
def embed_slide(model, slide: "PreparedSlide", branch: str = "image", batch_size: int = 256) -> np.ndarray:
    """Joint-space embeddings (n, d) of one slide's spots from the ``image`` or ``spot`` branch.

    Branches with a graph encoder run over the whole slide graph at once (a slide has at most a few
    thousand spots); the others, and the backbone on raw patches, run in chunks of ``batch_size``.
    The transformer spot encoder attends across all spots of the slide, as in training with whole slides.
    """
    if branch not in ("image", "spot"):
        raise ValueError(f"branch must be 'image' or 'spot', got {branch!r}")
    model.eval()
    device = next(model.parameters()).device
    if branch == "spot":
        if slide.spot_input is None:
            raise ValueError(f"slide {slide.slide_id!r} has no expression to embed on the spot branch")
        batch = {"spot_input": torch.as_tensor(slide.spot_input, dtype=torch.float32, device=device),
                 "coords": torch.as_tensor(slide.coords, dtype=torch.long, device=device)}
        if slide.edge_index is not None:
            batch["edge_index"] = slide.edge_index.to(device)
        return model.encode_spot(batch).emb.cpu().numpy().astype(np.float32)

    input_size = getattr(model.image_encoder, "input_size", None)
    feats = []
    for start in range(0, slide.n_spots, batch_size):
        inp = _image_input(slide, slice(start, start + batch_size), input_size, device)
        if "features" in inp:
            feats.append(inp["features"])
        elif "stage_input" in inp:
            feats.append(model.image_encoder.forward_tail(inp["stage_input"]))
        else:
            feats.append(model.image_encoder(inp["patch"]))
    batch = {"features": torch.cat(feats)}
    if slide.edge_index is not None:
        batch["edge_index"] = slide.edge_index.to(device)
    return model.encode_image(batch).emb.cpu().numpy().astype(np.float32)


def embed_slides(model, slides: Sequence["PreparedSlide"], branch: str) -> np.ndarray:
    """Row-stacked embeddings of several slides (slide order preserved)."""
    return np.concatenate([embed_slide(model, s, branch) for s in slides]) if slides else np.zeros((0, 0))
