"""Forgeries of a finished run folder, each by someone who can write it, and what catches
them (docs/ledger.md, "What each level proves"):

* with the key pinned (``--public-key``/``--fingerprint``): anything re-signed with
  another key;
* with one participant's receipts (``--receipts``): anything that changes or cuts the
  history, even re-signed with the ledger's own key;
* the final entry: every published file, and the number of rounds.

With neither pin nor receipts, verify says what it could not check."""

import json
import re
import shutil

import pytest
from conftest import TINY
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from fedgpt.cli.main import app
from fedgpt.config import load_config
from fedgpt.experiment import run_experiment
from fedgpt.federation.ledger import LEDGER, sha256_hex, sign
from fedgpt.federation.ledger_keys import (
    PUBLIC_KEY,
    fedgpt_home,
    fingerprint,
    load_private_key,
    public_pem,
    public_raw_hex,
)
from fedgpt.federation.receipts import receipt_files
from fedgpt.federation.verify import verify_run

runner = CliRunner()
ROUNDS = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("forgery")
    cfg = load_config(
        None,
        [*TINY, "baselines.enabled=false", f'out_dir="{out}"', f"federation.rounds={ROUNDS}"],
    )
    run_experiment(cfg, out / "run")
    return out / "run"


def lines_of(d):
    return (d / LEDGER).read_bytes().split(b"\n")[:-1]


def entries_of(d):
    return [json.loads(x) for x in lines_of(d)]


def server_key():
    return load_private_key(fedgpt_home() / "keys/ledger_key.pem")


def resign(d, entries, key):
    """Rewrite the ledger from ``entries`` (dicts), chained and signed with ``key``; the
    header and the public key file name ``key``."""
    lines, prev = [], "0" * 64
    for e in entries:
        e = {k: v for k, v in e.items() if k != "sig"}
        if e["kind"] == "header":
            e["public_key"] = public_raw_hex(key.public_key())
        line = sign({**e, "prev": prev}, key)
        lines.append(line)
        prev = sha256_hex(line)
    (d / LEDGER).write_bytes(b"".join(x + b"\n" for x in lines))
    (d / PUBLIC_KEY).write_bytes(public_pem(key.public_key()))


def honest_receipts(run):
    """One participant of the last round: its receipts file."""
    run_id = entries_of(run)[0]["run_id"]
    last = entries_of(run)[ROUNDS]
    files = receipt_files([fedgpt_home() / "receipts" / run_id])
    mine = [
        f for f in files if json.loads(f.read_text().splitlines()[-1])["receipt"]["round"] == ROUNDS
    ]
    assert mine and last["round"] == ROUNDS
    return mine[:1]


def rewrite_round(d, key):
    """Round 2 says another client update and other weights; re-signed with ``key``."""
    es = entries_of(d)
    es[2]["updates"] = {c: "0" * 64 for c in es[2]["updates"]}
    resign(d, es, key)


def truncate(d, key):
    """The last round cut, its checkpoint deleted, the model re-saved from round 2's
    checkpoint, the model and final entries re-made: a consistent 2-round run."""
    from fedgpt.federation.ledger import published_files

    es = entries_of(d)
    model, final = es[-2], es[-1]
    shutil.rmtree(d / f"checkpoints/round_{ROUNDS:06d}")
    keep = es[:ROUNDS]  # header, rounds 1 .. ROUNDS-1
    model = {**model, "round": ROUNDS - 1, "weights": keep[-1]["global_weights"]}
    cfg = re.sub(
        rf"^rounds = {ROUNDS}$",
        f"rounds = {ROUNDS - 1}",
        (d / "config.toml").read_text(),
        flags=re.M,
    )
    (d / "config.toml").write_text(cfg)
    resave_model(d, ROUNDS - 1)
    keep[0]["config_hash"] = sha256_hex((d / "config.toml").read_bytes())
    for e in keep[1:]:
        e["config_hash"] = keep[0]["config_hash"]
    resign(d, [*keep, model], key)
    final = {**final, "rounds_planned": ROUNDS - 1, "rounds_completed": ROUNDS - 1}
    final["files"] = published_files(d)
    resign(d, [*keep, model, final], key)


def resave_model(d, rnd):
    """The saved model replaced by round ``rnd``'s checkpoint weights, as the run saves it."""
    from safetensors.torch import load_file

    from fedgpt.models.build import load_pretrained, save_model
    from fedgpt.models.params import bind_flat

    bundle = load_pretrained(d / "model")
    bind_flat(bundle.model).load(
        load_file(d / f"checkpoints/round_{rnd:06d}/weights.safetensors")["weights"]
    )
    shutil.rmtree(d / "model")
    save_model(bundle, d / "model")


def cut_tail_unsigned(d, key=None):
    """The last round, its checkpoint, the model, the summary and the final entry gone;
    nothing re-signed (no key needed): an "unfinished" run."""
    lines = lines_of(d)
    (d / LEDGER).write_bytes(b"".join(x + b"\n" for x in lines[:ROUNDS]))
    shutil.rmtree(d / f"checkpoints/round_{ROUNDS:06d}")
    shutil.rmtree(d / "model")
    (d / "summary.json").unlink()


def edit(rel):
    def f(d, key=None):
        p = d / rel
        p.write_bytes(p.read_bytes() + b"\n")

    return f


def zero_older_checkpoint(d, key=None):
    p = d / f"checkpoints/round_{ROUNDS - 1:06d}/weights.safetensors"
    p.write_bytes(bytes(len(p.read_bytes())))


def delete_tail_checkpoint(d, key=None):
    shutil.rmtree(d / f"checkpoints/round_{ROUNDS:06d}")


OWN, NEW = "own key", "new key"
# forgery, key it is re-signed with, the levels that must catch it
CASES = {
    "rewrite a round, re-signed with the ledger's own key": (rewrite_round, OWN, {"receipts"}),
    "rewrite a round, re-signed with a new key": (rewrite_round, NEW, {"pin", "receipts"}),
    "consistent truncation, own key": (truncate, OWN, {"receipts"}),
    "consistent truncation, new key": (truncate, NEW, {"pin", "receipts"}),
    "tail cut without any key": (cut_tail_unsigned, None, {"plain", "receipts"}),
    "deleted tail checkpoint": (delete_tail_checkpoint, None, {"plain"}),
    "edited summary.json": (edit("summary.json"), None, {"plain"}),
    "edited metrics.jsonl": (edit("metrics.jsonl"), None, {"plain"}),
    "edited report.md": (edit("report.md"), None, {"plain"}),
    "zeroed older checkpoint": (zero_older_checkpoint, None, {"plain"}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_forgery_is_caught(run, tmp_path, name):
    forge, which, catches = CASES[name]
    pin = fingerprint(server_key().public_key())
    receipts = honest_receipts(run)
    d = tmp_path / "f"
    shutil.copytree(run, d)
    key = server_key() if which == OWN else Ed25519PrivateKey.generate() if which else None
    forge(d, key)
    plain = verify_run(d)
    pinned = verify_run(d, pinned=pin)
    held = verify_run(d, receipts=receipts)
    caught = {
        "plain": not plain.ok,
        "pin": not pinned.ok,
        "receipts": not held.ok,
    }
    assert {k for k, v in caught.items() if v} >= catches, (caught, held.problems)
    # anything plain verification catches, the stronger levels catch too
    if caught["plain"]:
        assert caught["pin"] and caught["receipts"]
    if not caught["plain"]:  # verify says what it could not know
        assert any("no key pinned" in n for n in plain.notes)
        assert any("no receipts" in n for n in plain.notes)


def test_the_honest_run_passes_every_level(run):
    pin = fingerprint(server_key().public_key())
    v = verify_run(run, pinned=pin, receipts=receipt_files([fedgpt_home() / "receipts"]))
    assert v.ok and v.pinned and v.finished and v.receipts >= ROUNDS, v.problems


def test_an_unfinished_run_is_incomplete_unless_allowed(run, tmp_path):
    d = tmp_path / "cut"
    shutil.copytree(run, d)
    cut_tail_unsigned(d)
    res = runner.invoke(app, ["verify", str(d)])
    assert res.exit_code == 1 and "incomplete: the ledger has no final entry" in res.output
    res = runner.invoke(app, ["verify", str(d), "--allow-incomplete"])
    assert res.exit_code == 0 and "INCOMPLETE" in res.output, res.output
    receipts = honest_receipts(run)
    res = runner.invoke(
        app, ["verify", str(d), "--allow-incomplete", "--receipts", str(receipts[0])]
    )
    assert res.exit_code == 1 and "the ledger has no such round" in res.output


def test_cli_pins_by_file_and_fingerprint(run, tmp_path):
    pub = tmp_path / "pinned.pem"
    pub.write_bytes(public_pem(server_key().public_key()))
    res = runner.invoke(app, ["verify", str(run), "--public-key", str(pub)])
    assert res.exit_code == 0 and "pinned key" in res.output and "NOT" not in res.output
    other = Ed25519PrivateKey.generate().public_key()
    res = runner.invoke(app, ["verify", str(run), "--fingerprint", fingerprint(other)])
    assert res.exit_code == 1 and "not by the pinned key" in res.output
    for bad in (["--fingerprint", "abc"], ["--public-key", str(tmp_path / "none.pem")]):
        res = runner.invoke(app, ["verify", str(run), *bad])
        assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output
    res = runner.invoke(app, ["verify", str(run), "--receipts", str(tmp_path)])
    assert res.exit_code == 2 and "no receipts.jsonl" in res.stderr


def test_a_client_flags_a_receipt_for_an_update_it_did_not_send(run):
    """The server's receipt names the update it received: a client whose update was
    swapped in transit or in the record sees it at once."""
    from fedgpt.federation.receipts import ReceiptBook

    book = ReceiptBook(fedgpt_home() / "receipts-check")
    key = server_key()
    good = {"kind": "receipt", "run_id": "ab" * 16, "round": 1, "client": "c", "head": "0" * 64,
            "update": "1" * 64, "public_key": public_raw_hex(key.public_key())}  # fmt: skip
    assert book.keep("c", sign(good, key), "1" * 64).config["problem"] == ""
    assert "not of the update" in book.keep("c", sign(good, key), "2" * 64).config["problem"]
    other = Ed25519PrivateKey.generate()
    forged = {**good, "public_key": public_raw_hex(other.public_key())}
    assert "another key" in book.keep("c", sign(forged, other), "1" * 64).config["problem"]
    assert "another client" in book.keep("d", sign(good, key), None).config["problem"]


def test_keys_ledger_shows_the_fingerprint_a_run_signs_with(tmp_path):
    key = tmp_path / "k.pem"
    res = runner.invoke(app, ["keys", "ledger", "--key", str(key)])
    assert res.exit_code == 0
    assert res.output.strip().endswith(fingerprint(load_private_key(key).public_key()))
    res = runner.invoke(app, ["keys", "ledger", "--key", str(tmp_path)])
    assert res.exit_code == 2 and "not a file" in res.stderr
