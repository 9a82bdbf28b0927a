"""The accountant against published reference values; the planner inverts it."""

import pytest

from fedgpt.errors import ConfigError
from fedgpt.privacy.accountant import Accountant, closed_form_epsilon, epsilon, plan_noise


def test_opacus_reference():
    # Opacus' own test: sigma=1.5, q=0.04, 2250 steps, delta=1e-5 -> eps = 7.3291
    assert epsilon(1.5, 0.04, 2250, 1e-5, "rdp") == pytest.approx(7.3291, rel=1e-3)


def test_tf_privacy_reference():
    # TF Privacy's test: sigma=1.3, q=150/60000, 6000 steps, delta=1e-5 -> eps = 0.72422
    assert epsilon(1.3, 150 / 60000, 6000, 1e-5, "rdp") == pytest.approx(0.72422, rel=1e-3)


def test_pld_is_tighter_than_rdp():
    rdp = epsilon(1.3, 150 / 60000, 6000, 1e-5, "rdp")
    pld = epsilon(1.3, 150 / 60000, 6000, 1e-5, "pld")
    assert 0.5 * rdp < pld < rdp


@pytest.mark.parametrize("kind", ["rdp", "pld"])
def test_plan_inverts_epsilon(kind):
    z = plan_noise(2.0, 0.05, 300, 1e-5, kind)
    assert epsilon(z, 0.05, 300, 1e-5, kind) <= 2.0
    assert epsilon(z * 0.99, 0.05, 300, 1e-5, kind) > 2.0


def test_running_accountant_equals_one_shot():
    acc = Accountant(delta=1e-5)
    for _ in range(100):
        acc.spend(1.1, 0.01)
    assert acc.epsilon() == pytest.approx(epsilon(1.1, 0.01, 100, 1e-5))
    assert acc.epsilon((1.1, 0.01)) == pytest.approx(epsilon(1.1, 0.01, 101, 1e-5))


def test_closed_form_is_only_a_rough_different_number():
    assert closed_form_epsilon(1.5, 0.04, 2250, 1e-5) != pytest.approx(7.3291, rel=0.05)


@pytest.mark.parametrize("args", [(0, 0.1, 10, 1e-5), (1, 1.5, 10, 1e-5), (1, 0.1, 10, 0)])
def test_bad_arguments(args):
    with pytest.raises(ConfigError):
        epsilon(*args)
