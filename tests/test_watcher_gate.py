"""Discovery names and scans, and the completeness gate, on real files in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wellwatch.daemon.settle_gate import CompletenessGate
from wellwatch.core.files.candidates import is_candidate_name
from wellwatch.daemon.watcher import Discovery, inside_root

EXT = (".tif", ".tiff")


@pytest.mark.unit
@pytest.mark.parametrize("name", ["A1--W00001--BF.tif", "x.tiff", "X.TIF", "a.b.tif"])
def test_candidate_names(name):
    assert is_candidate_name(name, EXT)


@pytest.mark.unit
@pytest.mark.parametrize("name", [".x.tif", "~x.tif", "x.tif.part", "x.tmp", "x.tif.tmp", "x.TIF.PART",
                                  "x.tif.crdownload", "x.png", "x.tif.bak", "x.jpg", "tif"])
def test_rejected_names(name):
    assert not is_candidate_name(name, EXT)


def write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x01" * size)
    return path


def grow(path: Path, extra: int) -> None:
    with open(path, "ab") as f:
        f.write(b"\x02" * extra)


@pytest.mark.unit
def test_growing_file_is_released_only_after_settle_polls(tmp_path):
    path = write(tmp_path / "a.tif", 100)
    gate = CompletenessGate(settle_polls=2)
    gate.offer(str(path))
    for _ in range(4):  # still being written between polls
        assert gate.poll() == []
        grow(path, 100)
    assert gate.poll() == []  # last change seen
    assert gate.poll() == []  # stable 1
    (ready,) = gate.poll()  # stable 2
    assert (ready.path, ready.size) == (str(path), 500)
    assert ready.mtime_ns == os.stat(path).st_mtime_ns
    assert len(gate) == 0 and gate.poll() == []


@pytest.mark.unit
def test_mtime_change_at_same_size_resets_stability(tmp_path):
    path = write(tmp_path / "a.tif", 100)
    gate = CompletenessGate(settle_polls=1)
    gate.offer(str(path))
    assert gate.poll() == []
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000))
    assert gate.poll() == []
    assert len(gate.poll()) == 1


@pytest.mark.unit
def test_rename_destination_is_released_at_once(tmp_path):
    tmp = write(tmp_path / "a.tif.part", 100)
    final = tmp_path / "a.tif"
    os.rename(tmp, final)
    gate = CompletenessGate(settle_polls=5)
    gate.offer(str(final))  # first seen as a plain event...
    gate.offer(str(final), renamed=True)  # ...then as a rename destination
    assert [r.path for r in gate.poll()] == [str(final)]


@pytest.mark.unit
def test_vanished_file_is_dropped(tmp_path):
    path = write(tmp_path / "a.tif", 100)
    gate = CompletenessGate(settle_polls=1)
    gate.offer(str(path))
    assert gate.poll() == [] and len(gate) == 1
    path.unlink()
    assert gate.poll() == [] and len(gate) == 0


@pytest.mark.unit
def test_zero_length_file_waits_for_bytes_then_is_released_for_quarantine(tmp_path):
    path = write(tmp_path / "a.tif", 0)
    gate = CompletenessGate(settle_polls=1, empty_polls=5)
    gate.offer(str(path), renamed=True)
    for _ in range(5):
        assert gate.poll() == []
    assert len(gate) == 1  # still watched: it may yet be written
    grow(path, 10)
    assert [r.size for r in gate.poll()] == [10]  # a rename destination: at once, once it has bytes

    empty = write(tmp_path / "b.tif", 0)
    gate.offer(str(empty))
    released = [gate.poll() for _ in range(7)]
    assert [len(r) for r in released] == [0, 0, 0, 0, 0, 1, 0]  # after empty_polls stable polls, once
    assert released[5][0].size == 0


@pytest.mark.unit
def test_several_candidates_are_independent(tmp_path):
    a, b = write(tmp_path / "a.tif", 10), write(tmp_path / "b.tif", 10)
    gate = CompletenessGate(settle_polls=1)
    gate.offer(str(a))
    gate.offer(str(b))
    gate.poll()
    grow(b, 1)
    assert [r.path for r in gate.poll()] == [str(a)]
    assert [r.path for r in gate.poll()] == [str(b)]


def discovery(root: Path, **kw) -> Discovery:
    return Discovery(str(root), on_path=lambda path, renamed: None, **kw)


@pytest.mark.integration
def test_list_files_recursive_ignoring_temp_names(tmp_path):
    root = tmp_path / "data"
    keep = [write(root / "A1--W00001--P00001--Z00000--T00000--BF.tif", 1),
            write(root / "sub" / "deeper" / "b.TIFF", 1)]
    for name in (".hidden.tif", "~lock.tif", "c.tif.part", "d.tmp", "notes.txt"):
        write(root / "sub" / name, 1)
    d = discovery(root)
    assert d.list_files() == sorted(str(p) for p in keep)
    assert discovery(root, recursive=False).list_files() == [str(keep[0])]


@pytest.mark.integration
def test_scan_offers_every_candidate(tmp_path):
    root = tmp_path / "data"
    files = [write(root / f"f{i}.tif", 1) for i in range(3)]
    offered = []
    d = Discovery(str(root), on_path=lambda path, renamed: offered.append((path, renamed)))
    assert d.scan() == 3
    assert offered == [(str(p), False) for p in files]


@pytest.mark.integration
def test_symlinks_outside_the_root_are_not_followed(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    real = write(root / "real.tif", 1)
    secret = write(outside / "secret.tif", 1)
    write(outside / "dir" / "deep.tif", 1)
    os.symlink(secret, root / "link_out.tif")
    os.symlink(outside / "dir", root / "linked_dir")
    os.symlink(real, root / "link_in.tif")
    found = discovery(root).list_files()
    assert found == sorted([str(real), str(root / "link_in.tif")])
    assert not inside_root(str(root / "link_out.tif"), os.path.realpath(root))


@pytest.mark.integration
def test_root_given_through_a_symlink(tmp_path):
    real_root = tmp_path / "real"
    f = write(real_root / "a.tif", 1)
    os.symlink(real_root, tmp_path / "alias")
    d = discovery(tmp_path / "alias")
    assert d.root_available() and [os.path.basename(p) for p in d.list_files()] == [f.name]


@pytest.mark.integration
def test_a_root_gone_between_the_config_check_and_the_observer_is_named_at_start(tmp_path):
    """A share dropping at start-up: one line naming watch.root, not a bare errno from watchdog."""
    from wellwatch.core.errors import StartupError

    root = tmp_path / "data"
    root.mkdir()
    discovery = Discovery(str(root), on_path=lambda *a: None)
    root.rmdir()
    with pytest.raises(StartupError, match=r"watch\.root .*data: cannot watch it"):
        discovery.start()
    discovery.stop()
