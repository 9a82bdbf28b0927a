"""CKKS aggregation: equals the plaintext weighted average, the server holds no secret key,
unreadable ciphertexts drop their sender, a whole run matches the plaintext run."""

import json
import stat

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fedgpt.cli.main import app
from fedgpt.config import load_config
from fedgpt.errors import FedGPTError
from fedgpt.experiment import run_experiment
from fedgpt.privacy.ckks import CiphertextError, CkksClient, CkksServer, make_keys

pytest.importorskip("tenseal")


@pytest.fixture(scope="module")
def keys():
    return make_keys()


def test_weighted_aggregate_equals_plaintext(keys):
    secret, public = keys
    client, server = CkksClient(secret), CkksServer(public)
    g = torch.Generator().manual_seed(0)
    deltas = [torch.randn(10_000, generator=g) * 0.01 for _ in range(3)]
    n = [5.0, 1.0, 2.0]  # the clients encrypt n_k * delta_k; the server only adds
    agg = server.sum([client.encrypt(nk * d) for nk, d in zip(n, deltas, strict=True)])
    got = client.decrypt(agg, 10_000) / sum(n)
    want = sum(nk * d for nk, d in zip(n, deltas, strict=True)) / sum(n)
    assert float((got - want).norm() / want.norm()) < 1e-6
    assert len(agg) == 3  # ceil(10000 / 4096) ciphertexts of N/2 slots


def test_server_holds_no_secret_key(keys):
    secret, public = keys
    assert not CkksServer(public).ctx.is_private()
    with pytest.raises(FedGPTError, match="must not hold the secret key"):
        CkksServer(secret)
    with pytest.raises(FedGPTError, match="no secret key"):
        CkksClient(public)


def test_unreadable_ciphertext_names_the_update(keys):
    secret, public = keys
    client, server = CkksClient(secret), CkksServer(public)
    good = client.encrypt(torch.ones(100))
    bad = [good[0][: len(good[0]) // 2]]  # truncated in transit
    with pytest.raises(CiphertextError) as err:
        server.sum([good, bad])
    assert err.value.index == 1


def test_ckks_run_matches_plaintext_run(tiny_overrides, tmp_path):
    base = [*tiny_overrides, "baselines.enabled=false"]
    run_experiment(load_config(None, base), tmp_path / "plain")
    run_experiment(
        load_config(None, [*base, 'privacy.secure_aggregation="ckks"']), tmp_path / "ckks"
    )
    a = load_file(tmp_path / "plain/model/model.safetensors")
    b = load_file(tmp_path / "ckks/model/model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    rows = [json.loads(x) for x in (tmp_path / "ckks/metrics.jsonl").read_text().splitlines()]
    plain = [json.loads(x) for x in (tmp_path / "plain/metrics.jsonl").read_text().splitlines()]
    assert rows[0]["bytes_up"] > 10 * plain[0]["bytes_up"]  # ciphertexts are large
    assert rows[0]["dropped"] == []


def test_truncated_ciphertext_drops_only_its_sender(tiny_overrides, tmp_path, monkeypatch):
    from fedgpt.federation.secure_sum_client import CkksEncryption

    orig = CkksEncryption.encode

    def tamper(self, client_id, reply):
        out = orig(self, client_id, reply)
        if self.tampered is None:
            self.tampered = True
            out.blobs["delta_ckks"][0] = out.blobs["delta_ckks"][0][:100]
        return out

    monkeypatch.setattr(CkksEncryption, "tampered", None, raising=False)
    monkeypatch.setattr(CkksEncryption, "encode", tamper)
    cfg = load_config(
        None,
        [
            *tiny_overrides,
            "baselines.enabled=false",
            'privacy.secure_aggregation="ckks"',
            "federation.rounds=1",
            "federation.min_clients=3",  # two remain: a majority of the cohort may be summed
        ],
    )
    run_experiment(cfg, tmp_path / "r")
    row = json.loads((tmp_path / "r/metrics.jsonl").read_text().splitlines()[0])
    assert len(row["dropped"]) == 1 and row["dropped"][0]["reason"].startswith("CKKS:")
    assert len(row["participants"]) == 2


def test_keys_command_and_config_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["keys", "ckks", str(tmp_path / "k")])
    assert res.exit_code == 0
    assert stat.S_IMODE((tmp_path / "k/secret_context.bin").stat().st_mode) == 0o600
    assert (tmp_path / "k/public_context.bin").stat().st_size > 0
    res = runner.invoke(
        app,
        ["run", "--set", 'privacy.secure_aggregation="ckks"', "--set", 'privacy.mode="central_dp"'],
    )
    assert res.exit_code == 2 and "cannot see updates" in res.stderr
    res = runner.invoke(
        app,
        [
            "run",
            "--set",
            'privacy.secure_aggregation="ckks"',
            "--set",
            f'privacy.ckks_keys="{tmp_path / "none"}"',
        ],
    )
    assert res.exit_code == 2 and "secret_context.bin" in res.stderr
