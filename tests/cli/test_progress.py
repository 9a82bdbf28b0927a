"""Without a terminal, ``fedgpt run`` logs plain lines: one every twentieth of the rounds
and every tenth of a long stage, each with the elapsed time and an ETA."""

from fedgpt.cli.progress import QuietHooks, clock


def row(r, test_loss=None):
    return {"round": r, "train_loss": 1.0, "test_loss": test_loss, "test_accuracy": None,
            "participants": ["a"], "dropped": [], "bytes_up": 0, "seconds": 1.0}  # fmt: skip


def test_round_lines_every_twentieth_with_an_eta(capsys):
    t = [0.0]
    hooks = QuietHooks(now=lambda: t[0])
    hooks.rounds(100, 0)
    for r in range(1, 101):
        t[0] += 3.0  # 3 s a round
        hooks.round_done(row(r))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 21  # round 1 and every 5th
    assert lines[1].startswith("round   5") and "[5/100, 15s elapsed, ETA 4m45s]" in lines[1]
    assert "[100/100, 5m00s elapsed, ETA 0s]" in lines[-1]


def test_a_resumed_run_estimates_from_its_own_rounds(capsys):
    t = [0.0]
    hooks = QuietHooks(now=lambda: t[0])
    hooks.rounds(40, 20)
    t[0] += 20.0
    hooks.round_done(row(22))  # 2 rounds in 20 s, 18 to go
    assert "ETA 3m00s" in capsys.readouterr().err


def test_long_stages_log_their_tenths(capsys):
    t = [0.0]
    hooks = QuietHooks(now=lambda: t[0])
    hooks.stage("baseline: centralized (200 steps)", 200)
    for _ in range(200):
        t[0] += 0.5
        hooks.advance()
    hooks.stage("round 3/10: training", 5)  # a round's stage: no line of its own
    for _ in range(5):
        hooks.advance()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "baseline: centralized (200 steps)"
    assert len(lines) == 1 + 9 and "20/200, 10s elapsed, ETA 1m30s" in lines[1]
    assert clock(3725) == "1h02m" and clock(65) == "1m05s"
