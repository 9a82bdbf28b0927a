"""Configurations generated from the schema (hypothesis): ``fedgpt run`` either accepts
one, or exits 2 with one line and writes nothing; it never ends in a traceback.

* Every key of the schema, with values of its type near and past its bounds, of other
  types, machine extremes (±inf, NaN, 1e308, 2**64), odd strings (NUL, controls, "..",
  long): checked up to the start of the preparation (300 examples).
* Real one-round runs of the tiny model under generated numeric settings: exit 0, exit 2
  with one line and nothing written, or exit 1 with one ``run failed:`` line.
"""

from __future__ import annotations

import json
import math
import typing

import pytest
from conftest import TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import fedgpt.experiment
from fedgpt.cli.main import app
from fedgpt.config import RunConfig

EXTREMES = [0, -1, 1, 2**31, 2**63, 2**64, -(2**63) - 1, 10**30]
FLOATS = [0.0, -0.0, 1e-320, 1e308, -1e308, math.inf, -math.inf, math.nan, 0.5, 1.0, 100.0]
STRINGS = ["", ".", "..", "../x", "a\x00b", "\x07", "ü", "x" * 300, "/", "/proc/self", "a b"]


def schema_keys(model=RunConfig, prefix=""):
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and hasattr(ann, "model_fields"):
            yield from schema_keys(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", ann


KEYS = [(k, a) for k, a in schema_keys() if k not in ("out_dir",)]


def toml_value(v) -> str:
    """``v`` as a TOML value for ``--set`` (what a user would type)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are TOML basic-string escapes
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def values_for(ann) -> st.SearchStrategy:
    """Values of the annotated type, its neighbours, and other types."""
    other = st.one_of(
        st.sampled_from(EXTREMES), st.sampled_from(FLOATS), st.sampled_from(STRINGS),
        st.booleans(), st.just([]), st.just({}),
    )  # fmt: skip
    if ann is bool:
        own = st.booleans()
    elif ann is int:
        own = st.one_of(st.integers(-5, 200), st.sampled_from(EXTREMES))
    elif ann is float:
        own = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(FLOATS))
    elif ann is str:
        own = st.one_of(st.text(max_size=20), st.sampled_from(STRINGS))
    elif typing.get_origin(ann) is typing.Literal:
        own = st.one_of(st.sampled_from(typing.get_args(ann)), st.text(max_size=8))
    elif typing.get_origin(ann) is list:
        own = st.lists(st.one_of(st.text(max_size=8), st.integers()), max_size=3)
    elif typing.get_origin(ann) is dict:
        own = st.dictionaries(st.text(max_size=6), st.one_of(st.text(max_size=6), st.floats()))
    else:
        own = other
    return st.one_of(own, own, other)


settings_strategy = st.lists(
    st.sampled_from(KEYS).flatmap(lambda ka: values_for(ka[1]).map(lambda v: (ka[0], v))),
    min_size=1,
    max_size=3,
)


class Accepted(Exception):
    """The configuration got through to the preparation."""


def one_line(text: str) -> bool:
    return text.count("\n") == 1 and text.endswith("\n")


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(pairs=settings_strategy)
def test_generated_configs_are_accepted_or_refused_in_one_line(pairs, tmp_path, monkeypatch):
    def stop(cfg):
        raise Accepted

    monkeypatch.setattr(fedgpt.experiment, "prepare", stop)
    out_dir = tmp_path / f"runs-{abs(hash(str(pairs)))}"
    args = ["run", "--no-baselines", "--set", f'out_dir="{out_dir}"']
    for key, value in pairs:
        args += ["--set", f"{key}={toml_value(value)}"]
    res = CliRunner().invoke(app, args)
    if isinstance(res.exception, Accepted):
        return
    assert res.exit_code == 2, (pairs, res.exit_code, res.output, repr(res.exception))
    assert one_line(res.output) and res.output.startswith("error: "), (pairs, res.output)
    assert not out_dir.exists(), pairs


NUMERIC = [
    (k, a)
    for k, a in KEYS
    if a in (int, float)
    and k.split(".")[0] in ("client", "federation", "privacy", "model")
    and k not in ("model.n_layer", "model.n_embd", "model.n_head", "model.context")
    and k not in ("federation.rounds", "client.local_steps", "client.batch_size")
    and not k.startswith("federation.distill")
]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    pairs=st.lists(
        st.sampled_from(NUMERIC).flatmap(
            lambda ka: st.one_of(st.sampled_from(FLOATS + [2, 3, 10**6]), st.floats(-10, 10)).map(
                lambda v: (ka[0], int(v) if ka[1] is int and math.isfinite(v) else v)
            )
        ),
        min_size=1,
        max_size=2,
    )
)
@pytest.mark.timeout(900)
def test_generated_runs_finish_or_stop_in_one_line(pairs, tmp_path):
    out_dir = tmp_path / f"runs-{abs(hash(str(pairs)))}"
    args = ["run", "--no-baselines", "--set", f'out_dir="{out_dir}"']
    for s in [*TINY, "federation.rounds=1", "federation.eval_every=1"]:
        args += ["--set", s]
    for key, value in pairs:
        args += ["--set", f"{key}={toml_value(value)}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code in (0, 1, 2), (pairs, res.exit_code, res.output, repr(res.exception))
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), (
        pairs,
        repr(res.exception),
    )
    last = res.output.strip().splitlines()[-1] if res.output.strip() else ""
    if res.exit_code == 2:
        assert one_line(res.output) and res.output.startswith("error: "), (pairs, res.output)
        assert not out_dir.exists(), pairs
    if res.exit_code == 1:
        assert last.startswith("run failed: "), (pairs, res.output)
