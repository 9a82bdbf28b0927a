"""Pure math on updates: weighted averaging and server optimisers."""

from fedgpt.aggregation.fedavg import coverage_average, dissimilarity, weighted_average
from fedgpt.aggregation.server_opt import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
    make_server_optimizer,
)

__all__ = [
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedYogi",
    "make_server_optimizer",
    "coverage_average",
    "dissimilarity",
    "weighted_average",
]
