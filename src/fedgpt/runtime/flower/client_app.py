"""The Flower ClientApp: FedGPT's clients behind a SuperNode.

What a node does with a message is :mod:`fedgpt.runtime.flower.node` (decode the batch,
run FedGPT's ``ClientApp``, save the clients' state, encode the replies). This module is
only Flower's entry point, and stays light: Flower starts a fresh ``flwr-clientapp``
process for every message, so it imports neither PyTorch nor Transformers and hands the
message to the node's long-lived agent (:mod:`fedgpt.runtime.flower.agent`), which has
them loaded. Where the agent is off (node-config ``agent=false``) or cannot be reached,
the process handles the message itself, with the same result.
"""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.app import Message as FlowerMessage
from flwr.clientapp import ClientApp as FlowerClientApp

from fedgpt.runtime.flower import agent

log = logging.getLogger(__name__)

app = FlowerClientApp()


def forward(message: FlowerMessage, context: Context) -> FlowerMessage:
    """The reply to ``message``: from the node agent, else from this process."""
    if agent.enabled(context.node_config):
        try:
            content, state = agent.call(context.node_config, context.state, message.content)
        except agent.Unavailable as exc:
            log.warning("FedGPT node agent unavailable, handling in this process: %s", exc)
        else:
            for key in list(context.state.keys()):
                del context.state[key]
            for key, record in state.items():
                context.state[key] = record
            return FlowerMessage(content, reply_to=message)
    from fedgpt.runtime.flower.node import handle

    return handle(message, context)


@app.train()
def _train(message: FlowerMessage, context: Context) -> FlowerMessage:
    return forward(message, context)


@app.evaluate()
def _evaluate(message: FlowerMessage, context: Context) -> FlowerMessage:
    return forward(message, context)


@app.query()
def _query(message: FlowerMessage, context: Context) -> FlowerMessage:
    return forward(message, context)
