import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from flowseg.errors import InputError
from flowseg.io import images
from flowseg.io.images import read_image, read_labels, write_image, write_labels
from tests.damaged_files import DAMAGE, damage


def _random(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_round_trip_keeps_dtype_and_values(tmp_path, dtype):
    image = _random(dtype, (7, 9))
    path = tmp_path / "x.png"
    Image.fromarray(image).save(path)
    out = read_image(path)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("shape", [(7, 9), (2, 7, 9), (3, 7, 9)])
def test_tif_write_read_round_trip(tmp_path, dtype, shape):
    if dtype == np.float32:
        image = np.random.default_rng(1).random(shape).astype(dtype)
    else:
        image = _random(dtype, shape)
    write_image(tmp_path / "x.tif", image)
    out = read_image(tmp_path / "x.tif")
    assert out.dtype == dtype and out.shape == shape
    np.testing.assert_array_equal(out, image)


def test_rgb_png_gray_collapses_colour_stays(tmp_path):
    gray = _random(np.uint8, (5, 6))
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), gray)
    colour = _random(np.uint8, (5, 6, 3), seed=2)
    Image.fromarray(colour).save(tmp_path / "c.png")
    out = read_image(tmp_path / "c.png")
    assert out.shape == (3, 5, 6)
    np.testing.assert_array_equal(out, np.moveaxis(colour, -1, 0))
    Image.fromarray(np.concatenate([colour, np.full((5, 6, 1), 255, np.uint8)], -1)).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), out)   # alpha dropped


def test_channels_last_tif_becomes_channels_first(tmp_path):
    colour = _random(np.uint16, (5, 6, 3))
    tifffile.imwrite(tmp_path / "rgb.tif", colour, photometric="rgb")
    out = read_image(tmp_path / "rgb.tif")
    np.testing.assert_array_equal(out, np.moveaxis(colour, -1, 0))


@pytest.mark.parametrize("top,dtype", [(65535, np.uint16), (65536, np.uint32)])
def test_labels_written_uint16_or_uint32(tmp_path, top, dtype):
    labels = np.zeros((4, 5), np.int32)
    labels[1, 1], labels[2, 3] = 1, top
    path = tmp_path / "m.tif"
    write_labels(path, labels)
    assert tifffile.imread(path).dtype == dtype
    out = read_labels(path)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, labels)
    assert [p.name for p in tmp_path.iterdir()] == ["m.tif"]      # no temp file left


def test_read_labels_png(tmp_path):
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    Image.fromarray(labels).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_labels(tmp_path / "m.png"), labels)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(InputError, match=r"image .*nope.png: no such file"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="bad.png: cannot read it as an image"):
        read_image(tmp_path / "bad.png")
    (tmp_path / "bad.tif").write_bytes(b"not a tif")
    with pytest.raises(InputError, match=r"label image .*bad.tif: cannot read"):
        read_labels(tmp_path / "bad.tif")


@pytest.mark.filterwarnings("ignore:.*zero-size array:UserWarning")
def test_nan_empty_and_wrong_ndim_refused(tmp_path):
    tifffile.imwrite(tmp_path / "nan.tif", np.array([[1.0, np.nan]], np.float32))
    with pytest.raises(InputError, match="NaN"):
        read_image(tmp_path / "nan.tif")
    tifffile.imwrite(tmp_path / "empty.tif", np.zeros((0, 4), np.uint8))
    with pytest.raises(InputError):
        read_image(tmp_path / "empty.tif")
    tifffile.imwrite(tmp_path / "4d.tif", np.zeros((2, 3, 4, 5), np.uint8), photometric="minisblack",
                     metadata={"axes": "TCYX"})
    with pytest.raises(InputError, match="expected \\(H, W\\) or \\(C, H, W\\)"):
        read_image(tmp_path / "4d.tif")
    tifffile.imwrite(tmp_path / "3d.tif", np.ones((2, 4, 5), np.uint8), photometric="minisblack")
    with pytest.raises(InputError, match="expected a 2-D"):
        read_labels(tmp_path / "3d.tif")


def test_bad_labels_refused(tmp_path):
    tifffile.imwrite(tmp_path / "neg.tif", np.array([[0, -1]], np.int16))
    with pytest.raises(InputError, match="expected labels in"):
        read_labels(tmp_path / "neg.tif")
    tifffile.imwrite(tmp_path / "frac.tif", np.array([[0, 1.5]], np.float32))
    with pytest.raises(InputError, match="fractional"):
        read_labels(tmp_path / "frac.tif")
    with pytest.raises(ValueError, match="non-negative"):
        write_labels(tmp_path / "w.tif", np.array([[0, -1]]))
    with pytest.raises(TypeError, match="integer dtype"):
        write_labels(tmp_path / "w.tif", np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=".tif"):
        write_labels(tmp_path / "w.png", np.zeros((2, 2), np.int32))


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_damaged_compressed_files_name_the_file(tmp_path, how, suffix):
    labels = np.random.default_rng(0).integers(0, 9, (64, 80)).astype(np.int32)
    path = tmp_path / f"m{suffix}"
    if suffix == ".tif":
        write_labels(path, labels)  # deflate-compressed, as flowseg writes its masks
    else:
        Image.fromarray(labels.astype(np.uint8)).save(path)
    damage(path, how)
    with pytest.raises(InputError, match=rf"label image .*m{suffix}: cannot read it as an image "
                                         r".*damaged or truncated\?\): \w+"):
        read_labels(path)
    with pytest.raises(InputError, match=rf"image .*m{suffix}: cannot read"):
        read_image(path)


@pytest.mark.parametrize("exc", [zlib.error("invalid stored block lengths"), struct.error("unpack"),
                                 IndexError("list index out of range"), KeyError(273),
                                 RuntimeError("DeflateError"), SyntaxError("broken PNG file"),
                                 ValueError("bad"), OSError("truncated")])
@pytest.mark.parametrize("reader", ["_read_tiff", "_read_pillow"])
def test_any_decoder_failure_is_one_input_error(tmp_path, monkeypatch, exc, reader):
    """Whatever a codec raises on a damaged file becomes one line naming the file."""
    def broken(path):
        raise exc

    monkeypatch.setattr(images, reader, broken)
    path = tmp_path / ("x.tif" if reader == "_read_tiff" else "x.png")
    path.write_bytes(b"some bytes")
    with pytest.raises(InputError, match=rf"x\.\w+: cannot read .*: {type(exc).__name__}") as info:
        read_image(path)
    assert "\n" not in str(info.value)


def test_memory_error_is_not_a_damaged_file(tmp_path, monkeypatch):
    def broken(path):
        raise MemoryError

    monkeypatch.setattr(images, "_read_tiff", broken)
    (tmp_path / "x.tif").write_bytes(b"some bytes")
    with pytest.raises(MemoryError):
        read_image(tmp_path / "x.tif")


def test_label_stacks_and_16_bit_png(tmp_path):
    from flowseg.io.png import write_labels_png

    stack = np.zeros((3, 8, 9), np.int32)
    stack[:, 2:5, 3:6] = 7
    write_labels(tmp_path / "s.tif", stack)
    np.testing.assert_array_equal(read_labels(tmp_path / "s.tif", allow_3d=True), stack)
    with pytest.raises(InputError, match=r"expected a 2-D \(H, W\) label image"):
        read_labels(tmp_path / "s.tif")
    write_labels_png(tmp_path / "p.png", stack[0] * 5000)
    np.testing.assert_array_equal(read_labels(tmp_path / "p.png"), stack[0] * 5000)
    with pytest.raises(ValueError, match="a 16-bit PNG holds ids 0..65535"):
        write_labels_png(tmp_path / "q.png", stack[0] * 10_000)
