"""Pure math on updates: the aggregators (one registered component per rule) and the
server optimisers. Importing the package registers the built-in rules."""

from fedgpt.aggregation import attention, fedatt, mean, robust  # noqa: F401  (registration)
from fedgpt.aggregation.base import (
    AGGREGATORS,
    Aggregate,
    Aggregator,
    AggregatorConfig,
    ServerContext,
    Updates,
    aggregate,
)
from fedgpt.aggregation.fedavg import coverage_average, dissimilarity, weighted_average
from fedgpt.aggregation.server_opt import (
    SERVER_OPTIMIZERS,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
    make_server_optimizer,
)

__all__ = [
    "AGGREGATORS",
    "Aggregate",
    "Aggregator",
    "AggregatorConfig",
    "SERVER_OPTIMIZERS",
    "ServerContext",
    "Updates",
    "aggregate",
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
