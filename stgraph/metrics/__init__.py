"""Evaluation metrics: numpy matrices ``(n_spots, n_genes)`` in, numbers or per-gene arrays out.

Per-gene Pearson and gene sets (:mod:`.correlation`), error metrics (:mod:`.errors`), HECLIP's SSIM
(:mod:`.ssim`), Hit@T (:mod:`.ranking`), all at once from arrays or AnnData (:mod:`.evaluate`), and fold
summaries / Markdown tables / atomic result files (:mod:`.report`).
"""
from .correlation import (constant_columns, gene_gene_correlation_preservation, gene_sets, mean_pearson,
                          median_variance_ratio, n_genes_above, pearson_per_gene, variance_ratio)
from .errors import mae, mse, rmse, rmse_zscore, rmse_zscore_per_gene, zscore_columns
from .evaluate import METRICS, align_prediction, evaluate_arrays, evaluate_prediction, per_gene_table
from .ranking import hit_at_t, top_t_mask
from .report import summarize_folds, to_markdown_table, write_csv_atomic, write_json_atomic
from .ssim import max_scale_columns, mean_ssim, ssim_per_gene

__all__ = [
    "METRICS", "align_prediction", "constant_columns", "evaluate_arrays", "evaluate_prediction",
    "gene_gene_correlation_preservation", "gene_sets", "hit_at_t", "mae", "max_scale_columns", "mean_pearson",
    "mean_ssim", "median_variance_ratio", "mse", "n_genes_above", "pearson_per_gene", "per_gene_table", "rmse",
    "rmse_zscore", "rmse_zscore_per_gene", "ssim_per_gene", "summarize_folds", "to_markdown_table",
    "top_t_mask", "variance_ratio", "write_csv_atomic", "write_json_atomic", "zscore_columns",
]
