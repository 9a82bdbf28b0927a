"""FedGPT: privacy-preserving federated fine-tuning of language models.

``fedgpt.federate(model, data, ...)`` runs a federation in one call (:mod:`fedgpt.api`);
``fedgpt run`` is the command line.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "federate":  # imported on first use: ``import fedgpt`` stays light
        from fedgpt.api import federate

        return federate
    raise AttributeError(f"module 'fedgpt' has no attribute {name!r}")
