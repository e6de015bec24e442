"""How far to trust a prediction: per-gene reliability, calibrated per-spot intervals, out-of-distribution flags.

Everything here is estimated on the *training* slides only, by leave-one-slide-out (each training slide in turn
predicted by a model that did not see it), kept in the run folder as ``trust.npz`` (:class:`TrustRecord`) and
applied to every prediction:

- :mod:`.reliability`: the expected per-gene Pearson r on an unseen slide (its mean and spread over the inner
  folds), and that expectation adjusted to the slide at hand;
- :mod:`.conformal`: split-conformal intervals (CV+ over the training slides), normalised per gene and spot;
- :mod:`.ood`: distance of each query spot to the training spots in the model's embedding space, against the
  distances the training slides themselves have to each other.
"""
from .conformal import INTERVAL_LEVELS, calibrate_intervals, intervals
from .ood import calibrate_ood, knn_distance, ood_scores, slide_out_of_distribution
from .record import TRUST_FILE, TrustRecord, build_trust
from .reliability import fold_gene_r, slide_expected_r

__all__ = ["TrustRecord", "build_trust", "TRUST_FILE", "INTERVAL_LEVELS", "calibrate_intervals", "intervals",
           "calibrate_ood", "knn_distance", "ood_scores", "slide_out_of_distribution", "fold_gene_r", "slide_expected_r"]
