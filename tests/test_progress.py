"""Progress on a terminal and in a log file."""


def test_progress_in_a_log_is_plain_lines_with_rate_and_eta(monkeypatch):
    import io

    from editscale import progress

    now = [100.0]  # a clock the test moves: the lines do not depend on how fast this machine is
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    p = progress.LineProgress("editing (rome)", 4, interval=0.0, stream=out)
    p.emit()
    for i in range(4):
        now[0] += 2.0
        p.advance(1, status=f"eff {i}")
    p.emit()  # the end: nothing new, so no repeated line
    lines = out.getvalue().splitlines()
    assert lines[0] == "editing (rome): 0/4 (0%), elapsed 0:00"
    assert lines[1] == "editing (rome): 1/4 (25%), elapsed 0:02, 2 s each, eta 0:06, eff 0"
    assert len(lines) == 5 and lines[-1] == "editing (rome): 4/4 (100%), elapsed 0:08, 2 s each, eff 3"


def test_a_resumed_runs_rate_counts_only_this_processs_work(monkeypatch):
    """A run resumed at 75/300 must not read the 75 earlier edits as done in the first seconds (a 2/s rate and
    an ETA of a minute and a half, as the first line of a resumed SmolLM2 run once said)."""
    import io

    from editscale import progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    p = progress.LineProgress("editing (encore)", 300, interval=0.0, stream=out, completed=75)
    p.emit()
    now[0] += 8.0
    p.advance(1)
    lines = out.getvalue().splitlines()
    assert lines[0] == "editing (encore): 75/300 (25%), elapsed 0:00"
    assert lines[1] == "editing (encore): 76/300 (25%), elapsed 0:08, 8 s each, eta 29:52"
