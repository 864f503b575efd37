"""Plate layouts read from the vendors' own files: real ImageXpress .HTD and CV8000 .mlf samples;
scanR, Operetta/Phenix and OME-XML written here in their documented formats."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from tests.conftest import shared_data
from wellwatch.core.layouts import LayoutError, detect_layout
from wellwatch.core.layouts.imagexpress import read_htd
from wellwatch.core.layouts.ome import read_ome

pytestmark = pytest.mark.unit


def test_imagexpress_htd_wells_sites_waves_timepoints_z():
    root = shared_data("vendor-folders", "ImageXpress_exported")
    single = detect_layout(root / "9987_Plate_3420")
    assert (single.wells, single.fields_expected("B2"), single.channels) == (("B2",), 1, ("",))
    assert single.channel_names == {"": "DAPI"} and single.fields["B2"] == (0,)  # no _s block in the name
    z = detect_layout(root / "9987_Plate_3434")
    assert z.wells == ("B2", "B3") and z.fields["B2"] == (1, 2) and z.z_planes == (0, 1, 2)
    assert z.fields_expected("B3") == 6 and z.fields_expected("A1") == 0
    assert z.channel_names == {"1": "DAPI", "2": "FITC", "3": "Texas Red", "4": "Cy5"}
    t = detect_layout(root / "9987_Plate_3435")
    assert t.timepoints == (1, 2, 3, 4, 5, 6) and t.z_planes == (0,)


def test_cv8000_mlf_lists_what_was_acquired_and_mrf_the_pixel_size():
    root = shared_data("vendor-folders", "CV8000")
    layout = detect_layout(next(root.iterdir()))
    assert layout.vendor == "cv8000" and layout.wells == ("D8", "E3", "F8")
    assert all(f == (1, 2, 3, 4) for f in layout.fields.values())
    assert layout.channels == ("1", "2") and layout.z_planes == (1, 2, 3, 4) and layout.timepoints == (1,)
    assert layout.pixel_size_um == 0.325 and (layout.rows, layout.cols) == (8, 12)


def test_imagexpress_folder_without_htd_has_no_layout():
    assert detect_layout(shared_data("vendor-folders", "ImageXpress", "SingleChannel")) is None


SCANR = """<?xml version="1.0" encoding="ISO-8859-1"?>
<LVData><Version>8.6</Version>
<!-- array elements carry empty names, so the array's name stays the key of their values -->
<Cluster><Name>plate</Name><NumElts>3</NumElts>
 <Cluster><Name>format typedef</Name><NumElts>2</NumElts>
  <I32><Name>Rows</Name><Val>8</Val></I32><I32><Name>Columns</Name><Val>12</Val></I32></Cluster>
 <String><Name>plate name</Name><Val>drug screen 7</Val></String>
 <Array><Name>well selection table + cDNA</Name><Dimsize>4</Dimsize>
  <String><Name></Name><Val>2</Val></String><String><Name></Name><Val>A2</Val></String>
  <String><Name></Name><Val>14</Val></String><String><Name></Name><Val>B2</Val></String></Array>
</Cluster>
<I32><Name>rows/well</Name><Val>2</Val></I32><I32><Name>columns/well</Name><Val>3</Val></I32>
<I32><Name># slices</Name><Val>1</Val></I32><I32><Name>timeloop real</Name><Val>4</Val></I32>
<DBL><Name>conversion factor um/pixel</Name><Val>0.3225</Val></DBL>
<Array><Name>channels</Name><Dimsize>3</Dimsize>
 <Cluster><Name>channel</Name><NumElts>2</NumElts>
  <String><Name>name</Name><Val>BF</Val></String><I32><Name>idle</Name><Val>0</Val></I32></Cluster>
 <Cluster><Name>channel</Name><NumElts>2</NumElts>
  <String><Name>name</Name><Val>Autofocus</Val></String><I32><Name>idle</Name><Val>0</Val></I32></Cluster>
 <Cluster><Name>channel</Name><NumElts>2</NumElts>
  <String><Name>name</Name><Val>PI</Val></String><I32><Name>idle</Name><Val>0</Val></I32></Cluster>
</Array>
</LVData>
"""


def test_scanr_descriptor_as_bioformats_reads_it(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "experiment_descriptor.xml").write_text(SCANR, encoding="latin-1")
    layout = detect_layout(tmp_path / "data")  # found beside data/, the folder the daemon watches
    assert layout.vendor == "scanr" and layout.wells == ("A2", "B2")
    assert layout.fields["A2"] == (1, 2, 3, 4, 5, 6) and layout.fields_expected("B2") == 6
    assert layout.channels == ("BF", "PI")  # the autofocus channel is not an image channel
    assert layout.timepoints == (0, 1, 2, 3) and layout.pixel_size_um == 0.3225


OPERETTA = """<?xml version="1.0" encoding="utf-8"?>
<EvaluationInputData xmlns="http://www.perkinelmer.com/PEHH/HarmonyV6" Version="2">
<Plates><Plate><PlateID>p</PlateID><PlateRows>16</PlateRows><PlateColumns>24</PlateColumns></Plate></Plates>
<Images>{images}</Images></EvaluationInputData>"""
IMAGE = """<Image Version="1"><id>x</id><URL>r{r:02d}c{c:02d}f{f:02d}p01-ch{ch}sk{t1}fk1fl1.tiff</URL><Row>{r}</Row>
<Col>{c}</Col><FieldID>{f}</FieldID><PlaneID>1</PlaneID><TimepointID>{t}</TimepointID><ChannelID>{ch}</ChannelID>
<ChannelName>{name}</ChannelName><ImageResolutionX Unit="m">6.5E-07</ImageResolutionX></Image>"""


def test_operetta_index_xml(tmp_path):
    images = "".join(IMAGE.format(r=r, c=c, f=f, t=t, t1=t + 1, ch=ch, name=name)
                     for r, c in ((2, 3), (3, 3)) for f in (1, 2, 3) for t in (0, 1)
                     for ch, name in ((1, "Brightfield"), (2, "DPC")))
    (tmp_path / "Images").mkdir()
    (tmp_path / "Images" / "Index.idx.xml").write_text(OPERETTA.format(images=images))
    layout = detect_layout(tmp_path)
    assert layout.vendor == "operetta" and layout.wells == ("B3", "C3") and (layout.rows, layout.cols) == (16, 24)
    assert layout.fields["C3"] == (1, 2, 3) and layout.timepoints == (1, 2)  # file names count sk from 1
    assert layout.channel_names == {"1": "Brightfield", "2": "DPC"} and layout.pixel_size_um == pytest.approx(0.65)


OME = """<?xml version="1.0" encoding="UTF-8"?>
<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">
<Plate ID="Plate:0" Rows="8" Columns="12"><Well ID="Well:0" Row="1" Column="4">
 <WellSample ID="WS:0" Index="0"><ImageRef ID="Image:0"/></WellSample>
 <WellSample ID="WS:1" Index="1"><ImageRef ID="Image:1"/></WellSample></Well></Plate>
<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint16" SizeX="64" SizeY="64" SizeC="2"
 SizeZ="1" SizeT="5" PhysicalSizeX="650" PhysicalSizeXUnit="nm"><Channel ID="Channel:0:0" Name="DIC"/>
 <Channel ID="Channel:0:1" Name="PH"/><TiffData/></Pixels></Image></OME>"""


def test_ome_xml_in_ome_tiff(tmp_path):
    path = tmp_path / "plate.ome.tif"
    tifffile.imwrite(path, np.zeros((2, 64, 64), np.uint16), description=OME, metadata=None)
    layout = read_ome(path)
    assert layout.wells == ("B5",) and layout.fields["B5"] == (1, 2)
    assert layout.channels == ("DIC", "PH") and layout.timepoints == (0, 1, 2, 3, 4)
    assert layout.pixel_size_um == pytest.approx(0.65)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((8, 8), np.uint16))
    with pytest.raises(LayoutError, match="plain.tif.*no OME-XML"):
        read_ome(plain)


def test_broken_htd_names_file_and_key(tmp_path):
    htd = tmp_path / "p.HTD"
    htd.write_text('"HTSInfoFile", Version 1.0\n"XWells", twelve\n"YWells", 8\n')
    with pytest.raises(LayoutError, match=r"p\.HTD.*'XWells' is not an integer"):
        read_htd(htd)
