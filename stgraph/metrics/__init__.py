"""Evaluation metrics (numpy in, numbers out), with AnnData wrappers."""
from .correlation import (gene_gene_correlation_preservation, gene_sets, mean_pearson, n_genes_above,
                          pearson_per_gene, variance_ratio)
from .errors import mae, mse, rmse, rmse_zscore, zscore_columns
from .evaluate import align_prediction, evaluate_arrays, evaluate_prediction, per_gene_table
from .ranking import hit_at_t
from .report import summarize_folds, to_markdown_table, write_csv_atomic, write_json_atomic
from .ssim import mean_ssim, ssim_per_gene

__all__ = [
    "align_prediction", "evaluate_arrays", "evaluate_prediction", "gene_gene_correlation_preservation",
    "gene_sets", "hit_at_t", "mae", "mean_pearson", "mean_ssim", "mse", "n_genes_above", "pearson_per_gene",
    "per_gene_table", "rmse", "rmse_zscore", "ssim_per_gene", "summarize_folds", "to_markdown_table",
    "variance_ratio", "write_csv_atomic", "write_json_atomic", "zscore_columns",
]
