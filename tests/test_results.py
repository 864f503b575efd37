"""`wellwatch results`: the journal's frames as tidy tables, joined to the plate map."""

from __future__ import annotations

import csv
import sqlite3
import time
from pathlib import Path

import pytest

from wellwatch.cli import main
from wellwatch.core.naming import format_scanr
from wellwatch.core.plate import PLATE_FORMATS, well_index
from wellwatch.results.tables import wells_path_for
from wellwatch.simulator.spec import SimulationSpec
from wellwatch.simulator.writer import PLATE_MAP, write_plate

SPEC = SimulationSpec(wells=("A1", "A2", "A3", "A4", "A5"), fields=1, timepoints=2, size=128, cells_per_field=6,
                      channels=("BF",), treatment="dose_series", control_columns=1, plate_name="res-plate", seed=3)


def journal_rows(path: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT path, version, state, live, dead, empty, well, timepoint FROM frames ORDER BY id").fetchall()


@pytest.fixture
def finished_plate(run_daemon, recorder_for, tmp_path):
    """A plate counted by the daemon, plus a damaged file (quarantined) and a re-written one (version 2)."""
    source = tmp_path / "source"
    write_plate(SPEC, source)
    config, running = run_daemon(SPEC, **{"pipeline.max_retries": 0, "watch.settle_s": 0.05})
    rec = recorder_for(config)
    data = Path(config.watch.root)
    files = sorted((source / "data").glob("*.tif"))
    for f in files:
        (data / f.name).write_bytes(f.read_bytes())
    broken = format_scanr("B1", well_index("B1", PLATE_FORMATS[96]), 1, 0, "BF")
    (data / broken).write_bytes(b"not a TIFF at all" * 50)
    rec.wait_frames(len(files))
    rewritten = files[0].name
    (data / rewritten).write_bytes(files[-1].read_bytes())  # new content: version 2 replaces it
    deadline = time.monotonic() + 60
    while len(journal_rows(config.journal.path)) < len(files) + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # the last well message reaches the recorder
    assert len(journal_rows(config.journal.path)) == len(files) + 2
    return config, rec, source, rewritten, broken


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.integration
def test_results_rows_equal_the_journals_frames(finished_plate, tmp_path):
    config, rec, source, rewritten, broken = finished_plate
    out = tmp_path / "results.csv"
    assert main(["results", "--journal", config.journal.path, "--out", str(out),
                 "--plate-map", str(source / PLATE_MAP)]) == 0
    rows = read_csv(out)
    journal = journal_rows(config.journal.path)
    assert [(r["file"], int(r["version"]), r["state"]) for r in rows] == [(j[0], j[1], j[2]) for j in journal]
    for r, j in zip(rows, journal):
        if r["state"] == "done":
            assert (int(r["live"]), int(r["dead"]), int(r["empty"])) == j[3:6]
    by_file = {}
    for r in rows:
        by_file.setdefault(r["file"], []).append(r)
    assert [r["latest"] for r in by_file[rewritten]] == ["False", "True"]
    assert by_file[broken][0]["state"] == "quarantined" and by_file[broken][0]["reason"]
    # joined to the plate map; the model that counted each frame
    a1 = next(r for r in rows if r["well"] == "A1")
    a5 = next(r for r in rows if r["well"] == "A5")
    assert (a1["role"], a1["concentration"]) == ("control", "0.0")
    assert a5["role"] == "treated" and float(a5["concentration"]) == pytest.approx(100.0)
    models = rec.of_type("frame")[0]["models"]
    assert {r["model_sha256"] for r in rows if r["state"] == "done"} == {";".join(models[n] for n in sorted(models))}


@pytest.mark.integration
def test_well_table_equals_the_daemons_last_well_messages(finished_plate, tmp_path):
    config, rec, source, rewritten, broken = finished_plate
    out = tmp_path / "results.csv"
    assert main(["results", "--journal", config.journal.path, "--out", str(out)]) == 0
    wells = read_csv(wells_path_for(out))
    last = {}
    for m in rec.of_type("well"):
        last[(m["well"], m["timepoint"])] = m
    assert len(wells) == len(SPEC.wells) * SPEC.timepoints == len(last)
    for w in wells:
        m = last[(w["well"], int(w["timepoint"]))]
        assert (int(w["live"]), int(w["dead"]), int(w["empty"])) == (m["counts"]["live"], m["counts"]["dead"],
                                                                      m["counts"]["empty"])
        assert int(w["fields"]) == m["frames"]


@pytest.mark.integration
def test_parquet_has_the_same_rows(finished_plate, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    config, *_ = finished_plate
    out = tmp_path / "results.parquet"
    assert main(["results", "--journal", config.journal.path, "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert table.num_rows == len(journal_rows(config.journal.path))
    assert table.schema.field("live").type == "int64" and table.schema.field("latest").type == "bool"
    assert pq.read_table(wells_path_for(out)).num_rows == len(SPEC.wells) * SPEC.timepoints


@pytest.mark.unit
def test_bad_inputs_say_what_is_wrong(tmp_path, caplog, capsys):
    assert main(["results", "--journal", str(tmp_path / "missing.sqlite"), "--out", str(tmp_path / "r.csv")]) == 2
    assert "missing.sqlite: no such file" in caplog.text
    not_db = tmp_path / "notes.sqlite"
    not_db.write_text("hello")
    assert main(["results", "--journal", str(not_db), "--out", str(tmp_path / "r.csv")]) == 2
    assert "notes.sqlite: not a wellwatch journal" in caplog.text
    assert main(["results", "--journal", str(not_db), "--out", str(tmp_path / "r.xlsx")]) == 2  # exit 2, not 1
    assert "r.xlsx: expected a .csv or .parquet" in capsys.readouterr().err


@pytest.mark.integration
def test_the_journal_is_opened_read_only(finished_plate):
    import sqlite3 as sql

    from wellwatch.results.journal_reader import open_read_only

    config, *_ = finished_plate
    db = open_read_only(config.journal.path)
    try:
        with pytest.raises(sql.OperationalError, match="readonly"):
            db.execute("DELETE FROM frames")
    finally:
        db.close()


@pytest.mark.integration
def test_the_one_reader_agrees_with_itself_and_the_stream_on_a_journal_the_daemon_wrote(finished_plate):
    from wellwatch.results.journal_reader import JournalView, well_history

    config, rec, source, rewritten, broken = finished_plate
    view = JournalView(Path(config.journal.path))
    versions = view.frame_versions()
    assert [f["path"] for f in versions if not f["latest"]] == [rewritten]  # its first version
    latest = [{k: v for k, v in f.items() if k not in ("latest", "message")} for f in versions if f["latest"]]
    assert latest == view.frames()  # the table's latest rows are the dashboard's frames
    done = [f for f in versions if f["state"] == "done"]
    # a done frame's journal row links the well message that announced it (the one carrying its models)
    assert done and all((m["type"], m["seq"], m["plate"], m["well"], m["timepoint"]) ==
                        ("well", f["seq"], f["plate"], f["well"], f["timepoint"]) and m["models"]
                        for f in done for m in [f["message"]])
    last = {}
    for m in rec.of_type("well"):
        last[(m["plate"], m["well"], m["timepoint"])] = m
    messages = well_history(config.journal.path)
    assert view.well_messages() == messages
    assert {(m["plate"], m["well"], m["timepoint"]): m["counts"] for m in messages} == \
        {k: m["counts"] for k, m in last.items()}


@pytest.mark.unit
def test_the_results_package_reads_the_journal_without_the_daemon():
    """wellwatch.results imports the science core and the standard library only: the dashboard and
    the daemon both import it, so it must not import either of them."""
    import ast

    used = set()
    for path in (Path(__file__).resolve().parents[1] / "results").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                used.add(node.module)
            elif isinstance(node, ast.Import):
                used |= {a.name for a in node.names}
    ours = {m for m in used if m.startswith("wellwatch")}
    assert ours and all(m.startswith("wellwatch.core.") for m in ours), sorted(ours)


@pytest.mark.integration
def test_a_dashboard_started_late_lists_the_quarantined_files(finished_plate):
    from wellwatch.results.journal_reader import JournalView
    from wellwatch.dashboard.live import LiveState, Source

    config, rec, source, rewritten, broken = finished_plate
    state = LiveState(Source("tcp://127.0.0.1:1", journal=JournalView(Path(config.journal.path))))
    state._load_journal()  # the history a late dashboard starts from, before it follows the stream
    assert [q["path"] for q in state.quarantined] == [broken]
    assert len(state.wells) == len(SPEC.wells) * SPEC.timepoints


@pytest.mark.integration
def test_a_calibrated_model_puts_its_intervals_on_the_stream_and_in_the_well_table(run_daemon, recorder_for, tmp_path):
    import dataclasses

    from wellwatch.core.intervals import Calibration

    from .calibrated_model import calibrated_demo_model

    cal = Calibration("classify_count", {"0.8": 0.05, "0.9": 0.1}, "per-well fractions only", wells=9)
    model = calibrated_demo_model(tmp_path / "calibrated.onnx", cal)
    spec = dataclasses.replace(SPEC, wells=("A1", "A2"), timepoints=1)
    source = tmp_path / "source"
    write_plate(spec, source)
    config, _ = run_daemon(spec, **{"models.live_dead.path": str(model), "intervals.level": 0.8})
    rec = recorder_for(config)
    files = sorted((source / "data").glob("*.tif"))
    for f in files:
        (Path(config.watch.root) / f.name).write_bytes(f.read_bytes())
    rec.wait_frames(len(files))
    time.sleep(0.5)  # the last well message reaches the recorder
    last = {m["well"]: m for m in rec.of_type("well")}
    for m in last.values():  # classify-and-count +- the 80% half-width
        assert m["live_fraction_estimate"] == pytest.approx(m["live_fraction"])
        assert m["live_fraction_interval"] == pytest.approx([max(0, m["live_fraction"] - 0.05),
                                                            min(1, m["live_fraction"] + 0.05)])
        assert m["interval_level"] == 0.8 and m["calls_usable"] is False
    out = tmp_path / "results.csv"
    assert main(["results", "--journal", config.journal.path, "--out", str(out)]) == 0
    wells = read_csv(wells_path_for(out))
    assert len(wells) == len(last)
    for w in wells:
        m = last[w["well"]]
        assert float(w["live_fraction_low"]) == pytest.approx(m["live_fraction_interval"][0])
        assert float(w["live_fraction_high"]) == pytest.approx(m["live_fraction_interval"][1])
        assert (w["estimator"], w["calls_usable"], w["interval_level"]) == ("classify_count", "False", "0.8")
