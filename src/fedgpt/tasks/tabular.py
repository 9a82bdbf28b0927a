"""The classical reference: classification of a record from its raw features.

The same records as the language-model classifier (:mod:`fedgpt.tasks.classification`),
as numbers instead of text (each data set's loader encodes them:
:func:`fedgpt.data.records.scaled`), for a logistic regression or a small MLP
(:mod:`fedgpt.models.tabular`, ``model.family``). The loss is the same cross-entropy over
the classes, L(w) = −(1/|B|) Σ_i log softmax(z_i)[y_i], and the metrics the same (accuracy,
log loss, AUC and calibration, per client and pooled), so the two stand side by side in
every strategy, privacy mode and baseline.

A client's records are one float32 tensor, one row per record: ``[ features (d) | label ]``.
"""

from __future__ import annotations

import torch

from fedgpt.errors import DataError
from fedgpt.models.device import model_device
from fedgpt.tasks.base import TASKS
from fedgpt.tasks.classification import Classification


def encode_features(ex) -> torch.Tensor:
    """The rows of ``ex`` (:class:`~fedgpt.data.records.Examples` with ``features``)."""
    if len(ex) and not ex.features:
        raise DataError(
            'task.kind = "tabular" needs records with numeric features (data.source = '
            '"pima" or "lending_club")'
        )
    width = len(ex.features[0]) if len(ex) else 0
    rows = torch.zeros((len(ex), width + 1), dtype=torch.float32)
    if len(ex):
        rows[:, :width] = torch.tensor(ex.features, dtype=torch.float32)
        rows[:, width] = torch.tensor(ex.labels, dtype=torch.float32)
    return rows


@TASKS.register("tabular")
class Tabular(Classification):
    accuracy = "accuracy"
    generates = False

    def encode(self, codec, part, seq_len):
        if isinstance(part, str):
            raise DataError('task.kind = "tabular" needs labelled records, not free text')
        return encode_features(part)

    def scores(self, model, rows):
        dev = model_device(model)
        return model(rows[:, :-1].to(dev)), rows[:, -1].long().to(dev)
