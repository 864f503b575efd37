"""File name -> FrameMeta: vendor presets on real files, scanR W index, user regexes."""

from __future__ import annotations

from pathlib import Path

import pytest

from wellwatch.core.errors import ConfigError, NamingError
from wellwatch.core.naming import FrameMeta, NamingScheme, format_nis, format_scanr
from wellwatch.core.plate import PLATE_FORMATS, all_wells, well_from_index, well_index

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_dir(name: str) -> Path:
    folder = DATA / name
    if not folder.is_dir():
        pytest.skip(f"shared data {folder} not present")
    return folder


def scheme(preset: str, plate: int = 96, pattern: str = "", default_well: str = "A1") -> NamingScheme:
    return NamingScheme(preset, PLATE_FORMATS[plate], "plate0", pattern, default_well)


# --- real vendor files ------------------------------------------------------------------------

def test_real_scanr_file_without_leading_well_name():
    folder = data_dir("vendor-files")
    (name,) = [p.name for p in folder.glob("--W*.tif")]
    assert scheme("scanr").parse(name) == FrameMeta("plate0", "A1", field=1, timepoint=0, z=0, channel="cherry")


def test_real_metaxpress_file_with_guid_suffix_on_384_plate():
    folder = data_dir("vendor-files")
    (name,) = [p.name for p in folder.glob("*_w1_*.tif")]
    meta = scheme("metaxpress", plate=384).parse(name)
    assert (meta.plate, meta.well, meta.channel) == ("101210OranePlt1", "C16", "1")


def test_real_metaxpress_well_c16_does_not_exist_on_96_plate():
    folder = data_dir("vendor-files")
    (name,) = [p.name for p in folder.glob("*_w1_*.tif")]
    with pytest.raises(NamingError, match="96-well"):
        scheme("metaxpress", plate=96).parse(name)


def test_real_cellomics_file():
    folder = data_dir("vendor-files")
    assert (folder / "AS_09125_050116030001_D03f00d0.tif").exists()
    meta = scheme("cellomics").parse("AS_09125_050116030001_D03f00d0.tif")
    assert (meta.well, meta.field, meta.channel) == ("D3", 0, "0")


def test_real_nis_elements_timelapse():
    folder = data_dir("nis-timelapse")
    names = sorted(p.name for p in folder.glob("*.tif"))
    assert len(names) == 8
    metas = [scheme("nis").parse(n) for n in names]
    assert [m.timepoint for m in metas] == list(range(1, 9))
    assert {(m.field, m.well, m.z, m.channel) for m in metas} == {(1, "A1", 0, "")}


# --- scanR ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, well", [
    ("A1--W00001--P00002--Z00000--T00003--BF.tif", "A1"),
    ("a01--W00001--P00002--Z00000--T00003--BF.tif", "A1"),
    ("B12--W00024--P00002--Z00000--T00003--BF.tif", "B12"),
])
def test_scanr_leading_well_consistent_with_w_index(name, well):
    assert scheme("scanr").parse(name) == FrameMeta("plate0", well, 2, 3, 0, "BF")


def test_scanr_leading_well_inconsistent_with_w_index():
    with pytest.raises(NamingError, match="disagrees"):
        scheme("scanr").parse("B1--W00001--P00001--Z00000--T00000--BF.tif")


@pytest.mark.parametrize("index", [0, 97])
def test_scanr_w_index_outside_96_plate(index):
    with pytest.raises(NamingError, match=f"well index {index}"):
        scheme("scanr").parse(f"--W{index:05d}--P00001--Z00000--T00000--BF.tif")


def test_scanr_384_plate_mapping():
    s = scheme("scanr", plate=384)
    assert s.parse("--W00025--P00001--Z00000--T00000--BF.tif").well == "B1"
    assert s.parse("--W00384--P00001--Z00000--T00000--BF.tif").well == "P24"
    with pytest.raises(NamingError):
        s.parse("--W00385--P00001--Z00000--T00000--BF.tif")


def test_format_scanr_round_trips_every_well_of_a_384_plate():
    plate = PLATE_FORMATS[384]
    s = scheme("scanr", plate=384)
    for i, well in enumerate(all_wells(plate), start=1):
        assert well_from_index(i, plate) == well and well_index(well, plate) == i
        assert s.parse(format_scanr(well, i, field=3, timepoint=7, channel="BF")).well == well


def test_1536_plate_double_letter_rows():
    plate = PLATE_FORMATS[1536]
    assert well_from_index(26 * 48 + 1, plate) == "AA1"
    assert well_from_index(1536, plate) == "AF48"
    assert well_index("AF48", plate) == 1536


# --- other presets (the docstring examples) ---------------------------------------------------

@pytest.mark.parametrize("preset, name, expected", [
    ("operetta", "r01c01f01p01-ch1sk1fk1fl1.tiff", FrameMeta("plate0", "A1", 1, 1, 1, "1")),
    ("operetta", "r02c03f04p02-ch2sk5fk1fl1.tiff", FrameMeta("plate0", "B3", 4, 5, 2, "2")),
    ("incucyte", "A1-1-Ph.tif", FrameMeta("plate0", "A1", 1, 0, 0, "Ph")),
    ("incucyte", "VID7_B12-3-Ph.tif", FrameMeta("VID7", "B12", 3, 0, 0, "Ph")),
    ("metaxpress", "A01_s1_w1.tif", FrameMeta("plate0", "A1", 1, 0, 0, "1")),
    ("metaxpress", "Plt2_H12_s4_w2.TIF", FrameMeta("Plt2", "H12", 4, 0, 0, "2")),
    ("nis", "seq0000xy01c1.tif", FrameMeta("plate0", "A1", 1, 0, 0, "1")),
    ("nis", "P1_B03_t001xy02c1.tif", FrameMeta("plate0", "B3", 2, 1, 0, "1")),
])
def test_preset_examples(preset, name, expected):
    assert scheme(preset).parse(name) == expected


def test_format_nis_round_trips():
    assert scheme("nis").parse(format_nis("p1", "C07", field=3, timepoint=12, channel_index=2)) == \
        FrameMeta("plate0", "C7", 3, 12, 0, "2")


def test_operetta_row_col_outside_plate():
    with pytest.raises(NamingError, match="outside the plate"):
        scheme("operetta").parse("r09c01f01p01-ch1sk1fk1fl1.tiff")


def test_nis_without_well_takes_default_well():
    assert scheme("nis", default_well="B2").parse("exp_t05xy03.tif").well == "B2"


# --- user regex -------------------------------------------------------------------------------

def test_user_regex_with_named_groups():
    s = scheme("regex", pattern=r"(?P<plate>\w+?)_(?P<row>\d+)-(?P<col>\d+)_f(?P<field>\d+)_(?P<channel>\w+)\.tif$")
    assert s.parse("run3_2-5_f7_BF.tif") == FrameMeta("run3", "B5", 7, 0, 0, "BF")


def test_user_regex_non_integer_field():
    s = scheme("regex", pattern=r"(?P<well>[A-H]\d+)_(?P<field>\w+)\.tif$")
    with pytest.raises(NamingError, match="field"):
        s.parse("A1_xx.tif")


@pytest.mark.parametrize("pattern, reason", [
    (r"(?P<well>[A-H]\d+", "not a valid regular expression"),
    (r"(?P<well>[A-H]\d+)_(?P<site>\d+)\.tif", "unknown named groups \\['site'\\]"),
])
def test_bad_user_regex_names_watch_pattern(pattern, reason):
    with pytest.raises(ConfigError, match=reason) as e:
        scheme("regex", pattern=pattern)
    assert e.value.key == "watch.pattern" and "watch.pattern" in str(e.value)


def test_unknown_preset_names_watch_naming():
    with pytest.raises(ConfigError, match="watch.naming"):
        scheme("zeiss")


@pytest.mark.parametrize("preset, name", [
    ("scanr", "A1--W00001--P00001--BF.tif"),
    ("scanr", "A1--W00001--P00001--Z00000--T00000--BF.png"),
    ("metaxpress", "notes.tif"),
    ("cellomics", "D03f00d0.tif"),
    ("operetta", "r01c01f01-ch1.tiff"),
    ("nis", "experiment.tif"),
    ("regex", "B1.tif"),
])
def test_non_matching_names_raise_naming_error_naming_the_file(preset, name):
    s = scheme(preset, pattern=r"(?P<well>[A-H]\d+)_(?P<field>\d+)\.tif$" if preset == "regex" else "")
    with pytest.raises(NamingError) as e:
        s.parse(name)
    assert e.value.name == name and name in str(e.value)
