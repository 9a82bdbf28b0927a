"""Federated text data: per-client train/test text from Shakespeare or user files."""

from __future__ import annotations

from fedgpt.data.clients import ClientText, client_from_lines, split_lines
from fedgpt.data.shakespeare import (
    Speech,
    load_plays,
    parse_play,
    play_titles,
    shakespeare_clients,
)
from fedgpt.data.stats import dataset_stats
from fedgpt.data.userdata import load_client_dir, load_text_file

__all__ = [
    "ClientText",
    "Speech",
    "client_from_lines",
    "dataset_stats",
    "load_client_dir",
    "load_plays",
    "load_text_file",
    "parse_play",
    "play_titles",
    "shakespeare_clients",
    "split_lines",
]
