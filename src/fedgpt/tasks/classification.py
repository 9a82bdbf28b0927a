"""Classification with a language model: the class is the model's next token.

Each record is a text, the task's question ("... Answer:") and a class; the classes are
verbalised (Schick & Schütze 2021, "Exploiting Cloze Questions for Few Shot Text
Classification", §3: a pattern and a verbaliser), each by the first token of its name. The
model's scores for the K verbaliser tokens after the question are the class logits z, and
the loss is the cross-entropy over the classes only,

    L(w) = −(1/|B|) Σ_i log softmax(z_i)[y_i],

so the LM head itself is the classifier and LoRA adapts it like any other fine-tuning. With
``model.head = "classifier"`` a new linear head on the question's last token gives z instead
(``AutoModelForSequenceClassification``; Radford et al. 2018, "Improving Language
Understanding by Generative Pre-Training", §3.2: the last token's state, a linear layer),
and the verbaliser is not used.
Reported: accuracy (arg-max class), log loss (the mean L), and for two classes AUC and
calibration (:mod:`fedgpt.tasks.scores`), per client and pooled.

A client's records are one int64 tensor, one row per record (right-padded, so causal
attention never sees the padding):

    [ tokens (seq_len) | length | label | class token ids (K) | K ]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedgpt.errors import DataError
from fedgpt.models.build import HEAD, PAD
from fedgpt.models.device import forward, marked, model_device
from fedgpt.tasks.base import TASKS, Task
from fedgpt.tasks.causal_lm import logits_of
from fedgpt.tasks.scores import histogram


def verbaliser_ids(codec, classes) -> list[int]:
    """The first token of each class name (" yes" for word-piece tokenisers, "y" for a
    character model); a DataError if two classes would share it."""
    for prefix in (" ", ""):
        ids = [int(codec.encode(prefix + c)[0]) for c in classes]
        if len(set(ids)) == len(ids):
            return ids
    raise DataError(f"classes {list(classes)}: their first tokens coincide; rename them")


def encode_examples(codec, ex, seq_len: int) -> torch.Tensor:
    """The rows of ``ex`` (:class:`~fedgpt.data.records.Examples`); each text keeps its last
    ``seq_len`` tokens (the question ends it)."""
    cls = verbaliser_ids(codec, ex.classes)
    k = len(cls)
    rows = torch.zeros((len(ex), seq_len + 3 + k), dtype=torch.long)
    for i, (text, label) in enumerate(zip(ex.texts, ex.labels, strict=True)):
        ids = codec.encode(f"{text} {ex.question}".rstrip())[-seq_len:]
        rows[i, : len(ids)] = torch.from_numpy(ids).long()
        rows[i, seq_len] = len(ids)
        rows[i, seq_len + 1] = int(label)
    rows[:, seq_len + 2 : seq_len + 2 + k] = torch.tensor(cls)
    rows[:, -1] = k
    return rows


def unpack(rows: torch.Tensor):
    """(tokens, lengths, labels, class ids) of a batch of rows."""
    k = int(rows[0, -1])
    width = rows.shape[1] - 3 - k
    lengths = rows[:, width]
    tokens = rows[:, : int(lengths.max())]
    return tokens, lengths, rows[:, width + 1], rows[0, width + 2 : width + 2 + k]


def class_logits(model, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K) class logits and the labels of ``rows``. Only the answer position of each row
    goes through the LM head (``logits_to_keep``, where the model takes it): with a 49 k
    vocabulary the head is a fifth of a small model's compute."""
    tokens, lengths, labels, cls = unpack(rows)
    pos = torch.arange(tokens.shape[1]).expand_as(tokens)
    if marked(model, HEAD) is not None:
        return head_logits(model, tokens, lengths, pos), labels.to(model_device(model))
    try:
        keep = (lengths - 1)[:, None]
        logits = forward(model, input_ids=tokens, position_ids=pos, logits_to_keep=keep).logits
    except TypeError:  # a model without logits_to_keep
        logits = logits_of(model, tokens)
    if logits.ndim != 3 or logits.shape[1] != 1:  # it kept other positions: take them all
        logits = logits_of(model, tokens)[torch.arange(tokens.shape[0]), lengths - 1][:, None]
    return logits[:, 0, cls.to(logits.device)].float(), labels.to(logits.device)


def head_logits(model, tokens, lengths, pos) -> torch.Tensor:
    """(B, K) logits of a classification head (``model.head = "classifier"``) on each row's
    last token: the model pools the last token that is not the padding id, so a row whose
    own last token is that id is refused."""
    if bool((tokens[torch.arange(tokens.shape[0]), lengths - 1] == PAD).any()):
        raise DataError(f"a record's text ends in token id {PAD}, the classifier's padding")
    return forward(model, input_ids=tokens, position_ids=pos).logits.float()


@TASKS.register("classification")
class Classification(Task):
    accuracy = "accuracy"
    generates = False

    def encode(self, codec, part, seq_len):
        if isinstance(part, str):
            raise DataError(
                'task.kind = "classification" needs labelled records (e.g. data.source = '
                '"pima"), not free text'
            )
        return encode_examples(codec, part, seq_len)

    def batch(self, data, batch_size, seq_len, gen):
        return data[torch.randint(0, data.shape[0], (batch_size,), generator=gen)]

    def scores(self, model, rows):
        """(B, K) class logits and the labels of ``rows``."""
        return class_logits(model, rows)

    def loss(self, model, batch):
        z, y = self.scores(model, batch)
        return F.cross_entropy(z, y)

    @torch.no_grad()
    def evaluate(self, model, data, seq_len, max_tokens=0):
        model.eval()
        if data.shape[0] == 0:
            return 0.0, 0, 0, {}
        z, y = zip(*(self.scores(model, chunk) for chunk in data.split(64)), strict=True)
        z, y = torch.cat(z).float().cpu(), torch.cat(y).cpu()
        loss_sum = float(F.cross_entropy(z, y, reduction="sum"))
        correct = int((z.argmax(-1) == y).sum())
        extra = {}
        if z.shape[1] == 2:
            p = torch.softmax(z, -1)[:, 1]
            extra["hist"] = histogram(p, y)
            if (auc := exact_auc(p, y)) is not None:  # one class only: no AUC of its own
                extra["auc"] = auc
        return loss_sum, correct, int(y.numel()), extra

    def metric_sums(self, model, data, seq_len, max_tokens=0):
        return self.evaluate(model, data, seq_len, max_tokens)[:3]

    def num_examples(self, data):
        return int(data.shape[0])

    def epoch_batches(self, data, batch_size, seq_len):
        return data.shape[0] / batch_size

    def records(self, data, seq_len):
        return data

    def split_tail(self, data, fraction, seq_len):
        n = data.shape[0]
        k = min(max(1, round(n * fraction)), n // 2)
        return data[: n - k], data[n - k :]


def exact_auc(p: torch.Tensor, y: torch.Tensor) -> float | None:
    """The client's own AUC (scikit-learn), None with one class only."""
    from sklearn.metrics import roc_auc_score

    if int(y.min()) == int(y.max()):
        return None
    return float(roc_auc_score(y.numpy(), p.numpy()))
