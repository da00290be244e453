import numpy as np
import pytest
import tifffile
from PIL import Image

from flowseg.errors import InputError
from flowseg.io.axes import arrange_axes, check_channel, select_channels
from flowseg.io.images import read_image_stack


@pytest.mark.parametrize("shape, axes, options, expected, is_stack", [
    ((20, 30), "YX", {}, (1, 1, 20, 30), False),
    ((20, 30, 3), "YXS", {}, (1, 3, 20, 30), False),
    ((20, 30, 4), "YXS", {}, (1, 3, 20, 30), False),            # RGBA: alpha dropped
    ((3, 20, 30), "CYX", {}, (1, 3, 20, 30), False),
    ((3, 20, 30), "ZYX", {}, (3, 1, 20, 30), True),
    ((3, 2, 20, 30), "ZCYX", {}, (3, 2, 20, 30), True),          # ImageJ hyperstack
    ((3, 20, 30), "QYX", {}, (1, 3, 20, 30), False),             # unlabelled: channels
    ((3, 20, 30), "SYX", {"z_axis": 0}, (3, 1, 20, 30), True),
    ((20, 30, 3), "QQQ", {"channel_axis": -1}, (1, 3, 20, 30), False),
    ((1, 3, 20, 30), "QQYX", {"z_axis": 1}, (3, 1, 20, 30), True),
])
def test_arrange_axes(shape, axes, options, expected, is_stack):
    data = np.arange(np.prod(shape)).reshape(shape)
    image, stack = arrange_axes(data, axes, **options)
    assert image.shape == expected and stack == is_stack


def test_arrange_axes_keeps_pixels_in_place():
    data = np.random.default_rng(0).integers(0, 99, (20, 30, 3))
    image, _ = arrange_axes(data, "YXS")
    np.testing.assert_array_equal(image[0, 1], data[..., 1])


@pytest.mark.parametrize("shape, axes, options, words", [
    ((2, 3, 20, 30), "QQYX", {}, "cannot tell which axes"),
    ((3, 20, 30), "QYX", {"z_axis": 0, "channel_axis": 0}, "both axis 0"),
    ((3, 20, 30), "QYX", {"z_axis": 3}, "z-axis 3 is out of range"),
])
def test_arrange_axes_errors_name_the_image(shape, axes, options, words):
    with pytest.raises(InputError, match=f"image x.tif: .*{words}"):
        arrange_axes(np.zeros(shape), axes, name="image x.tif", **options)


def test_select_channels_picks_merges_or_explains():
    rgb = np.stack([np.full((4, 5), v) for v in (10, 20, 30)])[None]
    assert select_channels(rgb, 2, in_channels=1)[0, 0, 0, 0] == 20
    assert select_channels(rgb, 0, in_channels=1)[0, 0, 0, 0] == pytest.approx(20)
    assert select_channels(rgb, (3, 1), in_channels=2)[0, :, 0, 0].tolist() == [30, 10]
    gray = rgb[:, :1]
    assert select_channels(gray, 2, in_channels=1).shape == (1, 1, 4, 5)  # gray: as it is
    assert select_channels(np.repeat(gray, 3, 1), None, in_channels=1).shape == (1, 1, 4, 5)
    with pytest.raises(InputError, match=r"image a.png: the model takes 1 channel\(s\), got 3; "
                                         r"pick with --channel N \(1..3"):
        select_channels(rgb, None, in_channels=1, name="image a.png")
    with pytest.raises(InputError, match="has 3 channel.*got channel 4"):
        select_channels(rgb, 4, in_channels=1)
    with pytest.raises(ValueError, match="channel: expected channel numbers >= 1"):
        check_channel((0, 1))
    with pytest.raises(TypeError, match="channel: expected an int"):
        check_channel("2")


def test_read_image_stack_from_files(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    image, stack = read_image_stack(tmp_path / "rgb.png")
    assert image.shape == (1, 3, 20, 30) and not stack
    np.testing.assert_array_equal(image[0, 2], rgb[..., 2])
    tifffile.imwrite(tmp_path / "z.tif", np.zeros((4, 20, 30), np.uint16), imagej=True,
                     metadata={"axes": "ZYX"})
    image, stack = read_image_stack(tmp_path / "z.tif")
    assert image.shape == (4, 1, 20, 30) and stack
    with pytest.raises(InputError, match="no such file"):
        read_image_stack(tmp_path / "none.tif")
