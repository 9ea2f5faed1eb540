"""The `confusion` probe: which test images a trained classifier gets wrong, and how.

Ask for it in a spec with `probes: [confusion]`; the last evaluation then also
reports (Tune keeps list values as JSON lists in result.json; the report carries
them into history.parquet and, as `final_<name>`, into trials.parquet):

- `confusion`: 10x10 nested list of counts over the whole test split, rows = true
  class, columns = predicted class (it sums to the number of test images, and its
  diagonal sum / that number is the trial's `test_acc`);
- `misclassified_idx`, `misclassified_true`, `misclassified_pred`,
  `misclassified_conf`: the `MISCLASSIFIED_TOP_K` wrong predictions with the
  highest softmax probability, most confident first, as indices into the dataset's
  full 10k test set (the Split's `idx` values), true labels, predicted labels and
  that probability.

The figure kinds `confusion` and `misclassified` (analysis/studies/errors.py) draw them.
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.data import Split
from trainables.probes import register_probe

# Images in the gallery of confident mistakes (a 4 x 6 grid). A fixed number, not a
# config key: it only sizes a list, it changes no measurement.
MISCLASSIFIED_TOP_K = 24


@torch.no_grad()
def confusion_and_mistakes(model: nn.Module, test: Split, batch_size: int, top_k: int = MISCLASSIFIED_TOP_K,
                           num_classes: int | None = None) -> dict:
    """The confusion matrix over the whole split and its `top_k` most confident errors.

    The whole split, not `probe_size` images: the matrix is meant to agree with the
    trial's test accuracy, and one extra forward pass over the test set is cheap."""
    model.eval()
    device = test.x.device
    matrix = None
    wrong_rows, wrong_true, wrong_pred, wrong_conf = [], [], [], []
    for start in range(0, len(test), batch_size):
        rows = test.idx[start : start + batch_size]
        labels = test.labels(rows)
        probs = torch.softmax(model(test.inputs(rows)).float(), dim=1)
        if matrix is None:  # classes: the model's outputs unless given
            num_classes = num_classes or probs.shape[1]
            matrix = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
        conf, pred = probs.max(dim=1)
        matrix += torch.bincount(labels * num_classes + pred, minlength=num_classes * num_classes)
        wrong = pred != labels
        wrong_rows.append(rows[wrong])
        wrong_true.append(labels[wrong])
        wrong_pred.append(pred[wrong])
        wrong_conf.append(conf[wrong])
    conf = torch.cat(wrong_conf)
    # Stable sort: equal confidences keep test-set order, so the list is deterministic.
    order = torch.sort(conf, descending=True, stable=True).indices[:top_k]
    return {
        "confusion": matrix.view(num_classes, num_classes).tolist(),
        "misclassified_idx": torch.cat(wrong_rows)[order].tolist(),
        "misclassified_true": torch.cat(wrong_true)[order].tolist(),
        "misclassified_pred": torch.cat(wrong_pred)[order].tolist(),
        "misclassified_conf": conf[order].tolist(),
    }


@register_probe("confusion")
def confusion(model: nn.Module, train: Split, test: Split, cfg) -> dict:
    return confusion_and_mistakes(model, test, cfg.eval_batch_size)
