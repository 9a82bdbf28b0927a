"""Classification metrics from score histograms, so that pooled AUC and calibration can be
computed from what clients report (counts per score bin) rather than a list of scores.
A histogram is not private: with few test records per client it tells each record's
score to a bin and its label (docs/data.md); it is sent like the other evaluation sums.

Each client reports, for the positive class's probability p, the number of negatives and
of positives in each of ``BINS`` bins and the sum of p per bin. The bins are 0.01 wide in
p, and in the tails (p < 0.09 or p > 0.91) 0.2 wide in log-odds out to ±9
(``fedgpt.schemas.SCORE_EDGES``): a model of a rare class gives every record a p near 0,
and bins of 0.01 alone would put them all in the first and its AUC at 0.5. Summed over
clients these give:

* AUC, P(p_pos > p_neg) + ½ P(p_pos = p_neg) with records of one bin counted as ties
  (Hanley & McNeil 1982, eq. 1 on grouped data); its error against the exact AUC is at most
  half the mass of pairs that share a bin;
* a 95 % interval for that AUC: the stratified bootstrap (Efron & Tibshirani 1993, §16;
  the numbers of positives and negatives kept, each class's records resampled), drawn
  from the bins' counts, so it needs no list of scores either;
* expected calibration error of p over ``ECE_BINS`` equal bins (Naeini et al. 2015; Guo et
  al. 2017 eq. 3 on the positive class): Σ_b (n_b/N) |positives_b/n_b − mean p_b|, exact,
  since every ECE bin is a union of score bins (their edges are among the score bins').
"""

from __future__ import annotations

import numpy as np
import torch

from fedgpt.schemas import BIN_HIGH, BIN_LOW, SCORE_EDGES

BINS = len(BIN_LOW)
ECE_BINS = 10
_EDGES = torch.tensor(SCORE_EDGES, dtype=torch.float64)
#: the calibration bin of each score bin (each lies inside one; its middle says which)
ECE_OF = np.minimum(((np.array(BIN_LOW) + np.array(BIN_HIGH)) / 2 * ECE_BINS).astype(int),
                    ECE_BINS - 1)  # fmt: skip


def bin_index(p_pos: torch.Tensor) -> torch.Tensor:
    """The score bin of each probability: BIN_LOW[b] <= p < BIN_HIGH[b] (p = 1 in the last)."""
    return torch.bucketize(p_pos.double().cpu(), _EDGES, right=True)


def histogram(p_pos: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """[negatives per bin | positives per bin | sum of p per bin], 3 × BINS numbers."""
    p_pos, labels = p_pos.cpu(), labels.cpu()
    b = bin_index(p_pos)
    neg = torch.bincount(b[labels == 0], minlength=BINS).double()
    pos = torch.bincount(b[labels == 1], minlength=BINS).double()
    psum = torch.zeros(BINS, dtype=torch.float64).index_add_(0, b, p_pos.double())
    return torch.cat([neg, pos, psum]).tolist()


def auc_from_histogram(hist) -> float | None:
    h = np.asarray(hist, dtype=np.float64).reshape(3, BINS)
    neg, pos = h[0], h[1]
    n0, n1 = neg.sum(), pos.sum()
    if n0 == 0 or n1 == 0:
        return None
    below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float((pos * (below + 0.5 * neg)).sum() / (n0 * n1))


def aucs(neg: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """AUC of each row of (draws, BINS) negative and positive counts."""
    below = np.cumsum(neg, axis=1) - neg
    return (pos * (below + 0.5 * neg)).sum(1) / (neg.sum(1) * pos.sum(1))


def auc_interval(hist, level: float = 0.95, draws: int = 2000, seed: int = 0):
    """(low, high): the stratified-bootstrap percentile interval of the histogram's AUC,
    from ``draws`` resamples on a generator seeded with ``seed``; None with one class."""
    h = np.asarray(hist, dtype=np.float64).reshape(3, BINS)
    n0, n1 = int(round(h[0].sum())), int(round(h[1].sum()))
    if n0 == 0 or n1 == 0:
        return None
    rng = np.random.default_rng([seed, 0xA0C])
    neg = rng.multinomial(n0, h[0] / h[0].sum(), size=draws).astype(np.float64)
    pos = rng.multinomial(n1, h[1] / h[1].sum(), size=draws).astype(np.float64)
    tail = (1 - level) / 2
    low, high = np.quantile(aucs(neg, pos), [tail, 1 - tail])
    return [float(low), float(high)]


def ece_from_histogram(hist) -> float | None:
    h = np.asarray(hist, dtype=np.float64).reshape(3, BINS)
    group = lambda row: np.bincount(ECE_OF, weights=row, minlength=ECE_BINS)  # noqa: E731
    n, pos, psum = group(h[0] + h[1]), group(h[1]), group(h[2])
    total = n.sum()
    if total == 0:
        return None
    seen = n > 0
    return float((np.abs(pos[seen] - psum[seen])).sum() / total)


def summarize(hist) -> dict:
    """AUC and ECE of a (summed) histogram; None where a class is missing."""
    return {"auc": auc_from_histogram(hist), "ece": ece_from_histogram(hist)}


def pooled_summary(hist) -> dict:
    """:func:`summarize` of the pooled histogram, with the AUC's 95 % interval
    (``auc_ci``) and the histogram itself (``hist``: for intervals over several runs)."""
    return {**summarize(hist), "auc_ci": auc_interval(hist), "hist": list(hist)}
