"""The SQLite journal: durability settings, atomic group commits, the outbox."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest

from wellwatch.core.errors import StartupError
from wellwatch.daemon.journal import FrameRecord, Journal, OutboxMessage, filesystem_type

pytestmark = pytest.mark.unit


def record(path: str, sha: str = "a" * 64, version: int = 1, live: int = 3) -> FrameRecord:
    return FrameRecord(path=path, size=100, mtime_ns=123, sha256=sha, version=version, state="done", reason=None,
                       plate="p", well="A1", field=1, timepoint=0, z=0, channel="BF", live=live, dead=1, empty=0,
                       t_file=1.0, t_done=2.0)


def msg(seq: int, topic: str = "frame/p/A1", **payload) -> OutboxMessage:
    return OutboxMessage(seq, topic, {"seq": seq, **payload})


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "journal.sqlite")
    yield j
    j.close()


def counts(path) -> tuple[int, int]:
    with closing(sqlite3.connect(path)) as db:  # a second, independent connection sees only committed data
        return (db.execute("SELECT COUNT(*) FROM frames").fetchone()[0],
                db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def test_wal_and_synchronous_full(journal, tmp_path):
    assert journal.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert journal.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with closing(sqlite3.connect(tmp_path / "journal.sqlite")) as other:  # WAL is persistent in the file
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_commit_and_read_back(journal, tmp_path):
    journal.commit([record("a.tif"), record("b.tif", sha="b" * 64, live=7)], [msg(1), msg(2)])
    assert counts(tmp_path / "journal.sqlite") == (2, 2)
    assert [r.live for r in journal.records()] == [3, 7]
    assert list(journal.records())[0] == record("a.tif")
    assert journal.has("a.tif", "a" * 64) and not journal.has("a.tif", "b" * 64)
    assert journal.latest_version("a.tif") == 1 and journal.latest_version("zzz.tif") == 0


def test_duplicate_record_rolls_back_the_whole_group(journal, tmp_path):
    journal.commit([record("a.tif")], [msg(1)])
    with pytest.raises(sqlite3.IntegrityError):
        journal.commit([record("new.tif", sha="c" * 64), record("a.tif")], [msg(2), msg(3)])
    assert counts(tmp_path / "journal.sqlite") == (1, 1)
    assert journal.last_seq() == 1 and not journal.has("new.tif", "c" * 64)
    journal.commit([record("new.tif", sha="c" * 64)], [msg(2)])  # the journal is still usable
    assert counts(tmp_path / "journal.sqlite") == (2, 2)


def test_failing_message_rolls_back_the_records(journal, tmp_path):
    journal.commit([record("a.tif")], [msg(1)])
    with pytest.raises(sqlite3.IntegrityError):
        journal.commit([record("b.tif", sha="b" * 64)], [msg(2), msg(1)])  # seq 1 already used
    assert counts(tmp_path / "journal.sqlite") == (1, 1)
    assert not journal.has("b.tif", "b" * 64)


def test_outbox_sequence_and_sent_state(journal):
    assert (journal.last_seq(), journal.last_sent_seq(), journal.unsent()) == (0, 0, [])
    journal.commit([], [msg(1, "well/p/A1", n=1), msg(2, "frame/p/A1", n=2), msg(3, "well/p/A2", n=3),
                        msg(4, "wellx", n=4)])
    assert journal.last_seq() == 4 and journal.last_sent_seq() == 0
    assert [m.seq for m in journal.unsent()] == [1, 2, 3, 4]
    assert journal.unsent()[2] == OutboxMessage(3, "well/p/A2", {"seq": 3, "n": 3})

    journal.mark_sent(3)
    assert journal.last_sent_seq() == 3 and [m.seq for m in journal.unsent()] == [4]
    assert [p["n"] for p in journal.sent_payloads("well/")] == [1, 3]
    assert [p["n"] for p in journal.sent_payloads("frame/")] == [2]
    assert list(journal.sent_payloads("status/")) == []
    journal.mark_sent(10)
    assert journal.last_sent_seq() == 4 and journal.unsent() == []


def test_state_survives_reopening(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    j.commit([record("a.tif")], [msg(1), msg(2)])
    j.mark_sent(1)
    j.close()
    j = Journal(tmp_path / "j.sqlite")
    assert (j.last_seq(), j.last_sent_seq(), [r.path for r in j.records()]) == (2, 1, ["a.tif"])
    j.close()


def test_missing_folder_raises_startup_error_naming_journal_path(tmp_path):
    with pytest.raises(StartupError, match="journal.path") as e:
        Journal(tmp_path / "no" / "such" / "j.sqlite")
    assert "does not exist" in str(e.value)


def test_non_sqlite_file_raises_startup_error(tmp_path):
    bad = tmp_path / "j.sqlite"
    bad.write_bytes(b"this is not a database, just text " * 100)
    with pytest.raises(StartupError, match="journal.path"):
        Journal(bad)


def test_filesystem_type(tmp_path):
    kind = filesystem_type(tmp_path)
    assert isinstance(kind, str) and kind and " " not in kind


def test_journal_on_a_network_filesystem_is_refused(tmp_path, monkeypatch):
    from wellwatch.daemon import journal as journal_module

    kind = journal_module.filesystem_type(tmp_path)
    monkeypatch.setattr(journal_module, "NETWORK_FILESYSTEMS", {kind})  # pretend tmp_path's fs is a share
    with pytest.raises(StartupError, match=rf"journal.path .* is on a {kind} network filesystem"):
        journal_module.Journal(tmp_path / "j.sqlite")


def test_inflight_files_show_as_seen_or_read_until_their_frame_commits(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    j.mark_inflight([("a.tif", 10, 1, "seen"), ("b.tif", 20, 2, "seen")])
    j.mark_inflight([("a.tif", 10, 1, "read")])
    status = lambda: dict(j.db.execute("SELECT path, status FROM frame_status").fetchall())  # noqa: E731
    assert status() == {"a.tif": "read", "b.tif": "seen"}
    record = FrameRecord("a.tif", 10, 1, "h", 1, "done", None, "p", "A1", 1, 0, 0, "BF", 3, 1, 5, 1.0, 2.0, 1)
    j.commit([record], [OutboxMessage(1, "frame/p/A1", {"type": "frame"})])
    assert status() == {"a.tif": "inferred", "b.tif": "seen"}
    j.mark_sent(1)
    assert status() == {"a.tif": "published", "b.tif": "seen"}
    assert j.clear_inflight() == 1 and status() == {"a.tif": "published"}
