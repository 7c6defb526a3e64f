"""Tests of the comparison figures in cimc.verify."""

from __future__ import annotations

import numpy as np
import pytest

from cimc.errors import InputError
from cimc.verify import compare, top1_accuracy


def test_identical_outputs_are_exact():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    c = compare({"y": x}, {"y": x.copy()})
    assert c.exact and c.max_abs_error == 0.0 and c.cosine == pytest.approx(1.0) and c.top1_agreement == 1.0


def test_figures_of_a_perturbed_output():
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], np.float32)
    ours = ref.copy()
    ours[1] = [1.0, 2.0, 3.5]  # second row's arg-max moves
    c = compare({"y": ours}, {"y": ref})
    assert not c.exact
    assert c.max_abs_error == pytest.approx(2.5)
    assert c.top1_agreement == 0.5
    assert 0.0 < c.cosine < 1.0
    assert set(c.as_dict()) == {"max_abs_error", "cosine", "top1_agreement", "exact"}


def test_scalar_outputs_have_no_top1_and_mismatches_are_errors():
    assert compare({"s": np.float32(1.0)}, {"s": np.float32(1.0)}).top1_agreement is None
    with pytest.raises(InputError, match="missing"):
        compare({}, {"y": np.zeros(2)})
    with pytest.raises(InputError, match="shape"):
        compare({"y": np.zeros(3)}, {"y": np.zeros(2)})


def test_top1_accuracy():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert top1_accuracy(logits, np.array([1, 0, 0])) == pytest.approx(2 / 3)


def test_check_labels_accepts_class_indices_and_names_each_fault():
    from cimc.verify import check_labels

    y = check_labels(np.array([0, 2, 1], np.uint8), 3, classes=3)
    assert y.dtype == np.int64 and y.tolist() == [0, 2, 1]
    for bad, n, msg in [(np.array([0.0, 1.0, 2.0]), 3, "float64 values"), (np.array([[0, 1, 2]]), 3, "1-D"),
                        (np.array([0, 1]), 3, "2 labels for 3 inputs"), (np.array([0, 1, 3]), 3, "label 3"),
                        (np.array([0, -1, 2]), 3, "label -1"), (np.array([True, False, True]), 3, "bool")]:
        with pytest.raises(InputError, match=msg):
            check_labels(bad, n, classes=3, what="--labels y.npy")
