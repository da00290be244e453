import json

import numpy as np
import pytest

from flowseg.errors import InputError
from flowseg.io.coco import coco_rle_string_to_counts, read_coco, segmentation_indices


def _encode_counts(counts):
    """Compressed COCO string, transcribed from pycocotools' rleToString (independent of the decoder)."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


@pytest.mark.parametrize(("text", "counts"), [("12", [1, 2]), ("532N", [5, 3, 2, 1]),
                                              ("T3", [100]), ("m01", [29, 1])])
def test_compressed_string_hand_cases(text, counts):
    assert coco_rle_string_to_counts(text).tolist() == counts
    assert _encode_counts(counts) == text


def test_compressed_string_random_round_trip():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5000, size=200).tolist()
    assert coco_rle_string_to_counts(_encode_counts(counts)).tolist() == counts


def _json(tmp_path, annotations):
    data = {
        "images": [{"id": 7, "file_name": "sub/a.tif", "height": 5, "width": 6},
                   {"id": 8, "file_name": "b.tif", "height": 5, "width": 6}],
        "categories": [{"id": 1, "name": "shsy5y"}, {"id": 2, "name": "cort"}],
        "annotations": annotations,
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


ANNOTATIONS = [
    # square with corners (1, 1) and (4, 4): pixel centres 1.5..3.5 -> rows 1-3, cols 1-3
    {"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0,
     "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]},
    # uncompressed column-major RLE: column 0, rows 2-3
    {"id": 2, "image_id": 7, "category_id": 1, "iscrowd": 0,
     "segmentation": {"size": [5, 6], "counts": [2, 2, 26]}},
    # compressed: column-major index 29 = row 4, column 5
    {"id": 3, "image_id": 7, "category_id": 2, "iscrowd": 0,
     "segmentation": {"size": [5, 6], "counts": "m01"}},
    {"id": 4, "image_id": 7, "category_id": 2, "iscrowd": 1,
     "segmentation": {"size": [5, 6], "counts": [0, 30]}},
]


@pytest.mark.parametrize("as_dict", [False, True])
def test_read_coco_known_pixels(tmp_path, as_dict):
    anns = {str(a["id"]): a for a in ANNOTATIONS} if as_dict else ANNOTATIONS
    images = read_coco(_json(tmp_path, anns))
    assert [im.file_name for im in images] == ["sub/a.tif", "b.tif"]
    a, b = images
    assert a.shape == (5, 6) and a.categories == ("shsy5y", "shsy5y", "cort")  # crowd skipped
    assert a.cell_type == "shsy5y" and b.cell_type == "unknown"
    expected = np.zeros((5, 6), np.int32)
    expected[1:4, 1:4] = 1
    expected[2:4, 0] = 2
    expected[4, 5] = 3
    np.testing.assert_array_equal(a.labels(), expected)
    assert not b.labels().any() and b.labels().shape == (5, 6)


def test_polygon_overlaps_resolved_smallest_on_top(tmp_path):
    anns = [{"id": 1, "image_id": 7, "category_id": 1, "segmentation": [[0, 0, 6, 0, 6, 5, 0, 5]]},
            {"id": 2, "image_id": 7, "category_id": 2, "segmentation": [[2, 2, 3, 2, 3, 3, 2, 3]]}]
    a = read_coco(_json(tmp_path, anns))[0]
    labels = a.labels()
    assert labels[2, 2] == 2 and (labels > 0).all() and (labels == 2).sum() == 1
    assert a.cell_type == "cort"   # tie 1-1: alphabetically first


@pytest.mark.parametrize(
    ("seg", "message"),
    [
        ({"size": [4, 6], "counts": [30]}, r"RLE size \[4, 6\] differs"),
        ({"size": [5, 6], "counts": [2, 2]}, "summing to height \\* width = 30"),
        ({"size": [5, 6], "counts": "m0\x7f"}, "bad RLE counts"),
        ([[1, 1, 2, 2]], "even number \\(>= 6\\)"),
        ("nope", "polygon list or an RLE dict"),
    ],
)
def test_bad_segmentations(seg, message):
    with pytest.raises(InputError, match=message):
        segmentation_indices(seg, (5, 6), name="x")


def test_bad_json(tmp_path):
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        read_coco(tmp_path / "bad.json")
    (tmp_path / "nokey.json").write_text("{}")
    with pytest.raises(InputError, match="missing key 'images'"):
        read_coco(tmp_path / "nokey.json")
    with pytest.raises(InputError, match="ann.json annotation 1: image_id 9"):
        read_coco(_json(tmp_path, [{"id": 1, "image_id": 9, "category_id": 1, "segmentation": []}]))
    with pytest.raises(InputError, match="category_id 5"):
        read_coco(_json(tmp_path, [{"id": 1, "image_id": 7, "category_id": 5, "segmentation": []}]))


# Real compressed strings (with pycocotools' own area and bbox) from val_cort_3.json of GitHub
# p890040/Sartorius--Cell-Instance-Segmentation-Competition, commit bd101e5c (see tests/data/README.md).
REAL_RLES = [
    ("cSe28o?9G2N1O2M2O2N2N1O2N10101N101N10O010O010O0O100O10O01_Om@MS?0RAMo>2d0O1O1N2O1O1Omcn7",
     [167, 304, 35, 41], 907),
    ("^jT63T`05V@KX?:b@I^?`01N3M2M3O1N3N1N2O2M2Ngai4", [387, 308, 14, 23], 156),
    ("l^a17o?3M2N3N2N2O0O2N2O1N1O2O1N2M2O2M2O001N101N1M4J5F;N1O2N11O0O2N3Md0\\O7I7I=CchQ9",
     [97, 159, 36, 71], 1252),
]


@pytest.mark.parametrize(("counts", "bbox", "area"), REAL_RLES)
def test_real_compressed_rle_matches_area_and_bbox(counts, bbox, area):
    idx = segmentation_indices({"size": [520, 704], "counts": counts}, (520, 704))
    rows, cols = np.divmod(idx, 704)
    assert idx.size == area
    assert [cols.min(), rows.min(), np.ptp(cols) + 1, np.ptp(rows) + 1] == bbox   # COCO bbox: x, y, w, h


def test_non_utf8_json_names_the_file(tmp_path):
    (tmp_path / "latin.json").write_bytes('{"images": "\u00e9"}'.encode("latin-1"))
    with pytest.raises(InputError, match=r"latin.json: not UTF-8 text \(byte 0xe9 at offset 12\)"):
        read_coco(tmp_path / "latin.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(InputError, match="list.json: missing key 'images'"):
        read_coco(tmp_path / "list.json")


def test_coco_results_read_back_with_flowseg_and_pycocotools(tmp_path):
    from types import SimpleNamespace

    from pycocotools.coco import COCO

    from flowseg.io.coco import write_coco_results
    from flowseg.synthetic import make_synthetic

    _, labels = make_synthetic("round", shape=(64, 80), seed=0)
    n = int(labels.max())
    result = SimpleNamespace(labels=labels, cell_types=tuple("ab"[i % 3 == 0] for i in range(n)),
                             scores=np.linspace(0.1, 0.9, n), class_names=("a", "b"))
    path = tmp_path / "x_coco.json"
    write_coco_results(path, result, file_name="x.tif")
    (image,) = read_coco(path)
    np.testing.assert_array_equal(image.labels(), labels)
    assert image.categories == result.cell_types and image.file_name == "x.tif"
    data = json.loads(path.read_text())
    assert [a["score"] for a in data["annotations"]] == pytest.approx(result.scores)
    ground = COCO(str(path))
    detections = ground.loadRes(data["annotations"])  # a COCO results list
    assert len(detections.anns) == n
    assert ground.loadCats(data["annotations"][0]["category_id"])[0]["name"] == result.cell_types[0]
    np.testing.assert_array_equal(ground.annToMask(ground.anns[3]), labels == 3)
