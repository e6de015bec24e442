"""Loss-term health monitor: stuck and non-finite terms are named in a warning."""
import math

import pytest

from stgraph.training.monitor import LossTermWarning, TermMonitor


def test_stuck_term_is_named_once():
    monitor = TermMonitor(patience=3)
    with pytest.warns(LossTermWarning, match=r"'dgi_image' has not changed for 3 epochs \(value 34.5388"):
        for epoch in range(5):
            flagged = monitor.update(epoch, {"align": 5.0 - epoch, "dgi_image": 34.5388, "total": 1.0})
    assert flagged == ["dgi_image"]
    assert monitor.warned == {("dgi_image", "stuck")}


def test_moving_terms_do_not_warn(recwarn):
    monitor = TermMonitor(patience=3)
    for epoch in range(6):
        assert monitor.update(epoch, {"align": 3.0 + 0.01 * (-1) ** epoch, "dgi_spot": 1.3 - 0.1 * epoch,
                                      "seconds": 1.0, "epoch": epoch}) == []
    assert not [w for w in recwarn if issubclass(w.category, LossTermWarning)]


def test_nonfinite_term_is_named():
    monitor = TermMonitor()
    with pytest.warns(LossTermWarning, match="'hsic_spot' is nan at epoch 2"):
        assert monitor.update(2, {"hsic_spot": math.nan, "align": 1.0}) == ["hsic_spot"]


def test_patience_must_cover_two_epochs():
    with pytest.raises(ValueError, match="at least 2"):
        TermMonitor(patience=1)
