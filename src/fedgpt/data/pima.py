"""The Pima Indians diabetes records (shipped; resources/pima/ORIGIN.md): 532 women, seven
measurements each, diabetic or not, as a federation of clinics.

Two partitions, both documented in docs/data.md:

* ``natural``: one client per age band (21-24, 25-29, 30-39, 40-49, 50+), as clinics
  that serve different age groups would hold them; the diabetes rate rises with age, so
  the clients differ in label balance and in their features;
* ``dirichlet``: ``data.num_clients`` clients whose label proportions are drawn from
  Dir(``data.dirichlet_alpha``) (:func:`fedgpt.data.records.dirichlet_partition`).

Each record is one text (TabLLM's list serialisation) with the question "Does this woman
have diabetes? Answer:" and the classes "no" / "yes". A client's records keep the shipped
order (the two files were a random split already); the first ``data.train_fraction`` train.
"""

from __future__ import annotations

import csv
import io
from importlib import resources

from fedgpt.data.clients import ClientText, Partitioning, records_clients
from fedgpt.data.records import scaled, serialise

FEATURES = {"npreg": "Pregnancies", "glu": "Glucose", "bp": "Blood pressure",
            "skin": "Skin fold", "bmi": "BMI", "ped": "Pedigree", "age": "Age"}  # fmt: skip
QUESTION = "Does this woman have diabetes? Answer:"
CLASSES = ("no", "yes")
#: the classical reference's encoding (fedgpt.data.records.scaled): (centre, scale)
SCALES = {"npreg": (3, 3), "glu": (120, 30), "bp": (70, 12), "skin": (30, 10),
          "bmi": (32, 7), "ped": (0.5, 0.3), "age": (35, 12)}  # fmt: skip
AGE_BANDS = ((21, 24), (25, 29), (30, 39), (40, 49), (50, 200))


def pima_rows() -> list[dict]:
    """The 532 records, Pima.tr then Pima.te, with numbers as numbers and ``type`` 0/1."""
    rows = []
    for name in ("Pima.tr.csv", "Pima.te.csv"):
        text = resources.files("fedgpt").joinpath(f"resources/pima/{name}").read_text("utf-8")
        for r in csv.DictReader(io.StringIO(text)):
            row = {k: (float(r[k]) if k in ("bmi", "ped") else int(r[k])) for k in FEATURES}
            row["type"] = 1 if r["type"] == "Yes" else 0
            rows.append(row)
    return rows


def pima_clients(part: Partitioning = Partitioning()) -> list[ClientText]:
    rows = pima_rows()

    def natural() -> dict[str, list[int]]:
        return {f"pima/age_{lo}-{hi}" if hi < 200 else f"pima/age_{lo}+":
                [i for i, r in enumerate(rows) if lo <= r["age"] <= hi]
                for lo, hi in AGE_BANDS}  # fmt: skip

    text = lambda r: serialise(r, FEATURES)  # noqa: E731
    num = lambda r: scaled(r, SCALES)  # noqa: E731
    spec = (CLASSES, QUESTION)
    return records_clients(rows, "type", natural, "pima", part, text, spec, num)
