"""`wellwatch layout`: every plate of a folder, .nd2 files in a folder, plate names, and one
timepoint rule (the vendor's own numbering: ImageXpress TimePoint_1 and NIS-Elements t001 are 1)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import shared_data
from wellwatch.cli import main

pytestmark = pytest.mark.unit


def layout_json(capsys, path) -> object:
    assert main(["layout", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_folder_of_three_imagexpress_plates_lists_all_three(capsys):
    folder = shared_data("vendor-folders", "ImageXpress_exported")
    plates = layout_json(capsys, folder)
    assert [p["source"].split("/")[-2] for p in plates] == ["9987_Plate_3420", "9987_Plate_3434", "9987_Plate_3435"]
    assert all(p["vendor"] == "imagexpress" and p["plate"] == "9987" for p in plates)  # the names' PLATE_ prefix
    assert plates[2]["timepoints"] == [1, 2, 3, 4, 5, 6]  # TimePoint_1 .. TimePoint_6


def test_a_folder_holding_an_nd2_file_shows_its_layout(capsys, tmp_path):
    src = shared_data("vendor-files", "nd2", "cluster.nd2")
    folder = tmp_path / "run-3"
    folder.mkdir()
    shutil.copy2(src, folder / "cluster.nd2")
    layout = layout_json(capsys, folder)
    assert layout["vendor"] == "nd2" and layout["plate"] == "run-3"  # the daemon's plate name for that folder
    assert layout["timepoints"] == [1, 2, 3] and layout["z_planes"] == 10
    assert layout_json(capsys, folder / "cluster.nd2") == layout
