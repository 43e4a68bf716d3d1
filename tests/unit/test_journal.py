"""The request journal's file: lines appended, rotated by size, read back newest last."""

from __future__ import annotations

from pathlib import Path

from hearth.server.http.journal import JOURNAL_FILE, KEPT_FILES, Journal, read_entries


def test_lines_rotate_by_size_and_read_back_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=200)
    for i in range(40):
        journal.write({"id": i, "route": "/v1/chat/completions"})
    journal.close()
    rotated = sorted(p.name for p in tmp_path.iterdir())
    assert rotated[0] == JOURNAL_FILE
    assert len(rotated) == KEPT_FILES + 1  # the oldest lines fell off the end
    assert all(p.stat().st_size <= 200 for p in tmp_path.iterdir())
    latest = read_entries(tmp_path, 10)
    assert [e["id"] for e in latest] == list(range(30, 40))
    everything = read_entries(tmp_path, 1000)
    ids = [e["id"] for e in everything]
    assert ids == sorted(ids) and ids[-1] == 39 and ids[0] > 0
