"""Local DP: the client clips its update and adds Gaussian noise before it leaves.

The released update clip(Δ_k, S) + N(0, (z·S)²·I) is a Gaussian mechanism on the client's
whole data set. Any two data sets of the client give clipped updates at most 2S apart,
so one release has noise multiplier z/2 with respect to that L2 sensitivity; a client that
takes part in c rounds composes c such releases (no subsampling amplification: the client
knows when it releases). Its ε is computed by the same accountant as central DP
(``Accountant`` with sample rate 1).
"""

from __future__ import annotations

import dataclasses
import json

import torch

from fedgpt.client.algorithm import ClientRound, ClientStep
from fedgpt.client.trainer import Update
from fedgpt.config import PrivacyConfig
from fedgpt.privacy.accountant import epsilon
from fedgpt.privacy.mechanisms import clip_rows, gaussian_noise


def privatize(
    delta: torch.Tensor, clip: float, noise_multiplier: float, gen: torch.Generator | None
) -> torch.Tensor:
    """clip(Δ, S) + N(0, (z S)²·I)."""
    clipped, _ = clip_rows(delta.unsqueeze(0), clip)
    return clipped[0] + gaussian_noise(delta.numel(), noise_multiplier * clip, gen)


def local_noise_multiplier(z: float) -> float:
    """The per-release noise multiplier w.r.t. replace-one-dataset sensitivity 2S."""
    return z / 2


def local_epsilon(z: float, releases: int, delta: float, kind: str = "rdp") -> float:
    """ε of one client after ``releases`` local-DP releases."""
    return epsilon(local_noise_multiplier(z), 1.0, releases, delta, kind)


class LocalDPRelease(ClientStep):
    """Local DP as a client step: clip and noise the update before it leaves, and send
    neither n_k nor loss or norm (they depend on the data): equal weights, timing metrics
    only. A client refuses to train once its next release would exceed
    ``privacy.target_epsilon``. Noise from the OS CSPRNG unless ``reproducible_noise``
    (then from the round's client generator)."""

    name = "local_dp"

    def __init__(self, cfg: PrivacyConfig, noise_multiplier: float):
        self.cfg, self.z = cfg, noise_multiplier
        self.releases: dict[str, int] = {}  # updates each client has released
        self.unseen: dict[str, int] = {}  # releases of rounds the run redid (charge_unseen)

    def admit(self, ctx: ClientRound) -> str | None:
        p = self.cfg
        if p.target_epsilon == 0:
            return None
        cid = ctx.client_id
        nxt = self.releases.get(cid, 0) + self.unseen.get(cid, 0) + 1
        if local_epsilon(self.z, nxt, p.delta, p.accountant) > p.target_epsilon:
            return "privacy budget exhausted"
        return None

    def after(self, ctx: ClientRound, update: Update) -> Update:
        noise_gen = ctx.gen if self.cfg.reproducible_noise else None
        noisy = privatize(update.delta, self.cfg.clip_norm, self.z, noise_gen)
        self.releases[ctx.client_id] = self.releases.get(ctx.client_id, 0) + 1
        kept = {k: update.metrics[k] for k in ("steps", "seconds")}
        return dataclasses.replace(update, delta=noisy, num_examples=1, metrics=kept)

    def state_dict(self) -> dict[str, bytes]:
        out = {"releases": json.dumps(self.releases).encode()}
        if self.unseen:
            out["releases_unseen"] = json.dumps(self.unseen).encode()
        return out

    def load_state_dict(self, saved) -> None:
        if "releases" in saved:
            self.releases = _counts(saved["releases"])
        self.unseen = _counts(saved.get("releases_unseen", b"{}"))

    def charge_unseen(self, newer) -> None:
        """Add the releases ``newer`` (a later state of these clients) made beyond the
        restored ones to ``unseen``: they left the client, so they stay spent."""
        later = _counts(newer.get("releases", b"{}"))
        later_unseen = _counts(newer.get("releases_unseen", b"{}"))
        for cid in set(later) | set(later_unseen):
            extra = max(later.get(cid, 0) - self.releases.get(cid, 0), 0)
            self.unseen[cid] = max(self.unseen.get(cid, 0), later_unseen.get(cid, 0) + extra)


def _counts(raw: bytes) -> dict[str, int]:
    return {k: int(v) for k, v in json.loads(raw).items()}
