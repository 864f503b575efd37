"""Classification metrics (scikit-learn's), with the one-class case answered as NaN, not an error."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores)))


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean recall over the classes present in `labels`."""
    labels = np.asarray(labels)
    with warnings.catch_warnings():  # a predicted class absent from labels is simply not averaged
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", "A single label was found")
        return float(balanced_accuracy_score(labels, np.asarray(predicted).astype(labels.dtype)))
