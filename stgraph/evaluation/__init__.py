"""Cross-validated evaluation (leave-one-section-out, patient-aware) with baselines."""
from .baselines import BASELINES, mean_profile, ridge_regression, untrained_retrieval
from .folds import Fold, her2st_patient, make_folds
from .protocol import SUMMARY_METRICS, baseline_fold, cross_validate, evaluate_fold

__all__ = [
    "BASELINES",
    "Fold",
    "SUMMARY_METRICS",
    "baseline_fold",
    "cross_validate",
    "evaluate_fold",
    "her2st_patient",
    "make_folds",
    "mean_profile",
    "ridge_regression",
    "untrained_retrieval",
]
