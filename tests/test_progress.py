"""Progress on a terminal and in a log file."""


def test_progress_in_a_log_is_plain_lines_with_rate_and_eta(monkeypatch):
    import io

    from editscale.progress import LineProgress

    out = io.StringIO()
    p = LineProgress("editing (rome)", 4, interval=0.0, stream=out)
    p.emit()
    for i in range(4):
        p.advance(1, status=f"eff {i}")
    p.emit()  # the end: nothing new, so no repeated line
    lines = out.getvalue().splitlines()
    assert lines[0] == "editing (rome): 0/4 (0%), elapsed 0:00"
    assert len(lines) == 5 and lines[-1].startswith("editing (rome): 4/4 (100%)") and "eff 3" in lines[-1]
    assert "eta" in lines[1] and "eta" not in lines[-1]
