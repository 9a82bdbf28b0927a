"""The compatibility matrix of docs/aggregation.md, checked exhaustively: every
combination of aggregator × privacy mode × secure aggregation × distillation × device
tiers × hybrid aggregation is either accepted or refused with one line, exactly as the
matrix says; refused ones exit 2 from the CLI."""

import itertools

import pytest
from typer.testing import CliRunner

from fedgpt.cli.main import app
from fedgpt.config import load_config
from fedgpt.errors import ConfigError
from fedgpt.federation.compat import check

AGGREGATORS = ["fedavg", "median", "trimmed_mean", "krum", "multi_krum", "norm_bound"]
AGGREGATORS += ["fedatt", "attention"]
MODES = ["none", "local_dp", "dp_sgd", "central_dp", "distributed_dp"]
SECURE = ["none", "secagg", "ckks"]
DISTILL = ["none", "feddf", "fedmd"]


def refused(agg, mode, secure, distill, tiers, hybrid) -> bool:
    """The matrix of docs/aggregation.md, written independently of the code."""
    individual = agg != "fedavg"  # every other rule looks at individual updates
    if mode == "distributed_dp" and secure != "secagg":  # its noise is added inside SecAgg
        return True
    if secure != "none" and mode == "central_dp":
        return True
    if individual and (secure != "none" or mode == "central_dp"):
        return True
    if tiers and (mode != "none" or secure != "none" or agg not in ("fedavg", "attention")):
        return True
    if distill == "feddf" and (secure != "none" or mode == "central_dp"):
        return True
    if distill == "fedmd" and (
        mode != "none" or secure != "none" or agg != "fedavg" or hybrid or tiers
    ):
        return True
    return False


def sets(agg, mode, secure, distill, tiers, hybrid) -> list[str]:
    out = [
        f'federation.aggregator="{agg}"',
        f'privacy.mode="{mode}"',
        f'privacy.secure_aggregation="{secure}"',
        f'federation.distill="{distill}"',
        'data.public_plays=["macbeth"]',
        "privacy.noise_multiplier=1.0",
    ]
    if tiers:
        out.append('devices.tier="embeddings"')
    if hybrid:
        out.append("federation.hybrid_lambda=0.5")
    return out


COMBOS = list(itertools.product(AGGREGATORS, MODES, SECURE, DISTILL, [False, True], [False, True]))


def test_matrix_exhaustively():
    wrong = []
    for combo in COMBOS:
        try:
            check(load_config(None, sets(*combo)))
            got = False
        except ConfigError as exc:
            got = True
            assert "\n" not in str(exc), combo
        if got != refused(*combo):
            wrong.append((combo, got))
    assert not wrong, wrong[:5]
    assert sum(refused(*c) for c in COMBOS) > len(COMBOS) // 2  # the check is not vacuous


@pytest.mark.parametrize(
    "combo",
    [
        ("median", "none", "secagg", "none", False, False),
        ("attention", "central_dp", "none", "none", False, False),
        ("fedavg", "local_dp", "none", "fedmd", False, False),
        ("fedavg", "none", "ckks", "feddf", False, False),
        ("fedavg", "none", "none", "fedmd", False, True),
        ("fedavg", "none", "secagg", "none", True, False),
        ("krum", "none", "none", "none", True, False),
    ],
)
def test_refused_combinations_exit_2_with_one_line(combo):
    res = CliRunner().invoke(app, ["run", *[a for s in sets(*combo) for a in ("--set", s)]])
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1


def test_public_text_is_required():
    for s in ['federation.aggregator="attention"', 'federation.distill="feddf"']:
        with pytest.raises(ConfigError, match="needs data.public_plays"):
            load_config(None, [s])
