"""Plots (matplotlib; the backend is left to the user, the CLI uses Agg): spatial gene maps over H&E, training loss curves, per-fold benchmark values.

Every function returns the Figure and, given ``path=``, writes it atomically.
"""
from .benchmark import plot_fold_pcc
from .spatial import plot_genes, slide_image
from .training import plot_loss_curves, save_figure

__all__ = ["plot_fold_pcc", "plot_genes", "plot_loss_curves", "save_figure", "slide_image"]
