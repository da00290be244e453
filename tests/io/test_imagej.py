import numpy as np
from roifile import ROI_TYPE, roiread
from skimage.draw import polygon

from flowseg.io.imagej import write_rois
from flowseg.outlines import outline_polygons
from flowseg.synthetic import make_synthetic


def _fill(xy, shape):
    """The pixels of a polygon through pixel centres, its boundary pixels included."""
    mask = np.zeros(shape, bool)
    mask[polygon(xy[:, 1], xy[:, 0], shape)] = True
    mask[xy[:, 1], xy[:, 0]] = True
    return mask


def test_roi_zip_read_with_roifile_matches_the_masks(tmp_path):
    _, labels = make_synthetic("round", shape=(64, 80), seed=0)
    write_rois(tmp_path / "x_rois.zip", labels)
    write_rois(tmp_path / "x_rois.zip", labels)  # rewritten, not appended to
    rois = roiread(tmp_path / "x_rois.zip")
    assert len(rois) == labels.max()
    for k, roi in enumerate(rois, start=1):
        assert roi.name == f"{k:04d}" and roi.roitype == ROI_TYPE.FREEHAND  # as cellpose writes them
        xy = roi.coordinates().astype(int)
        np.testing.assert_array_equal(xy, outline_polygons(labels)[k - 1])
        cell = labels == k
        filled = _fill(xy, labels.shape)
        assert (filled & cell).sum() / (filled | cell).sum() > 0.95


def test_stack_rois_carry_their_plane(tmp_path):
    _, labels = make_synthetic("round", shape=(64, 80), seed=0)
    stack = np.stack([labels, np.where(labels == 1, 0, labels)])
    write_rois(tmp_path / "s_rois.zip", stack)
    rois = roiread(tmp_path / "s_rois.zip")
    assert len(rois) == 2 * labels.max() - 1
    assert rois[0].name == "0001-0001" and rois[0].position == 1
    assert rois[-1].position == 2 and rois[-1].name == f"0002-{labels.max():04d}"
