"""Classification metrics from logits: accuracy, macro-F1, log loss, per-class precision/recall, ROC-AUC
(binary) and the confusion matrix (in the metrics and as a PNG). numpy only, so ``qatune evaluate`` and
the compare report do not need scikit-learn; ``tests/test_classification.py`` checks them against it.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half); None with one class only."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i: j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(logits: np.ndarray, gold: np.ndarray, labels: Sequence[str],
                           weights: Sequence[float] | None = None) -> dict[str, Any]:
    """Metrics of ``logits`` [n, k] against class ids ``gold`` [n]; percentages for accuracy/F1/precision/recall."""
    k = len(labels)
    probs = softmax(logits.astype(np.float64))
    predicted = probs.argmax(1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (gold, predicted), 1)
    tp = np.diag(confusion).astype(np.float64)
    precision = np.divide(tp, confusion.sum(0), out=np.zeros(k), where=confusion.sum(0) > 0)
    recall = np.divide(tp, confusion.sum(1), out=np.zeros(k), where=confusion.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    nll = -np.log(np.clip(probs[np.arange(len(gold)), gold], 1e-15, 1.0))
    metrics: dict[str, Any] = {
        "accuracy": float(100 * (predicted == gold).mean()),
        "macro_f1": float(100 * f1.mean()),
        "log_loss": float(nll.mean()),
        "per_class": {name: {"precision": float(100 * precision[i]), "recall": float(100 * recall[i]),
                             "f1": float(100 * f1[i]), "support": int(confusion[i].sum())}
                      for i, name in enumerate(labels)},
        "confusion_matrix": {"labels": list(labels), "rows_gold_columns_predicted": confusion.tolist()},
        "eval_examples": int(len(gold)),
    }
    if weights is not None:  # the training loss as the loop computes it (class-weighted mean)
        w = np.asarray(weights, dtype=np.float64)[gold]
        metrics["eval_loss"] = float((w * nll).sum() / w.sum())
    else:
        metrics["eval_loss"] = metrics["log_loss"]
    if k == 2:
        metrics["roc_auc"] = roc_auc(probs[:, 1], gold == 1)
    return metrics


def confusion_png(metrics: dict[str, Any], title: str = "confusion matrix") -> bytes:
    """The confusion matrix as a PNG (counts, rows gold, columns predicted)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = metrics["confusion_matrix"]["labels"]
    matrix = np.array(metrics["confusion_matrix"]["rows_gold_columns_predicted"])
    size = 2.2 + 0.7 * len(labels)
    fig = Figure(figsize=(size + 1, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(f"{title} (accuracy {metrics['accuracy']:.1f}%)")
    top = matrix.max() or 1
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > top / 2 else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
