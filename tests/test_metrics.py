import numpy as np
import pytest

from cnnclinic.training.metrics import classification_metrics

NAMES = ["cod", "eel", "ray"]


def test_hand_checked_three_class_case():
    # Predictions: cod, cod, eel, ray, ray  vs targets: cod, eel, eel, ray, cod
    probs = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.6, 0.3, 0.1],
            [0.2, 0.7, 0.1],
            [0.1, 0.1, 0.8],
            [0.3, 0.1, 0.6],
        ]
    )
    targets = np.array([0, 1, 1, 2, 0])
    m = classification_metrics(probs, targets, NAMES)
    assert m.accuracy == pytest.approx(3 / 5)
    assert m.confusion == [[1, 0, 1], [1, 1, 0], [0, 0, 1]]
    cod = m.per_class["cod"]
    assert (cod.precision, cod.recall, cod.support) == (pytest.approx(1 / 2), pytest.approx(1 / 2), 2)
    assert m.per_class["eel"].precision == pytest.approx(1.0)
    assert m.per_class["eel"].recall == pytest.approx(1 / 2)
    assert m.per_class["eel"].f1 == pytest.approx(2 / 3)
    assert m.per_class["ray"].precision == pytest.approx(1 / 2)
    # eel scores: positives 0.3, 0.7; negatives 0.1, 0.1, 0.1 -> every positive outranks every negative.
    assert m.per_class["eel"].auc == pytest.approx(1.0)
    # cod scores: positives 0.8, 0.3; negatives 0.6, 0.2, 0.1 -> 5 of 6 pairs ranked right.
    assert m.per_class["cod"].auc == pytest.approx(5 / 6)
    # ray: positive 0.8; negatives 0.1, 0.1, 0.6, 0.1 -> 4 of 4.
    assert m.per_class["ray"].auc == pytest.approx(1.0)
    assert m.macro_auc == pytest.approx((5 / 6 + 1 + 1) / 3)


def test_class_absent_from_targets_has_no_auc_and_is_left_out_of_macro():
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    targets = np.array([0, 1, 0])
    m = classification_metrics(probs, targets, NAMES)
    assert m.per_class["ray"].auc is None
    assert m.per_class["ray"].support == 0
    assert m.auc["cod"] == pytest.approx(1.0)
    assert m.macro_auc == pytest.approx(1.0)


def test_never_predicted_class_has_zero_precision_not_a_warning(recwarn):
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.0, 0.9]])
    targets = np.array([0, 1, 2])
    m = classification_metrics(probs, targets, NAMES)
    assert m.per_class["eel"].precision == 0.0
    assert m.per_class["eel"].recall == 0.0
    assert not [w for w in recwarn if "precision" in str(w.message).lower()]


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="N x 3"):
        classification_metrics(np.zeros((2, 2)), np.array([0, 1]), NAMES)
