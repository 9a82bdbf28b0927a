"""Differential privacy: mechanisms, accounting, central and local DP."""

from fedgpt.privacy.accountant import Accountant, closed_form_epsilon, epsilon, plan_noise
from fedgpt.privacy.central_dp import CentralDP, adaptive_clip_step, update_noise_multiplier
from fedgpt.privacy.engine import ServerPrivacy, resolve_noise
from fedgpt.privacy.local_dp import local_epsilon, privatize
from fedgpt.privacy.mechanisms import clip_rows, gaussian_noise, secure_normal

__all__ = [
    "Accountant",
    "CentralDP",
    "ServerPrivacy",
    "adaptive_clip_step",
    "clip_rows",
    "closed_form_epsilon",
    "epsilon",
    "gaussian_noise",
    "local_epsilon",
    "plan_noise",
    "privatize",
    "resolve_noise",
    "secure_normal",
    "update_noise_multiplier",
]
