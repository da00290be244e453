import pytest
import torch

from flowseg.tiling import blend_weight, split_tiles, stitch_tiles, tile_grid


@pytest.mark.parametrize("shape", [(300, 500), (520, 704), (50, 70), (256, 256), (257, 1000)])
def test_split_then_stitch_is_identity(shape):
    gen = torch.Generator().manual_seed(0)
    image = torch.rand((2, *shape), generator=gen)
    grid = tile_grid(shape, tile=128, overlap=0.1)
    tiles = split_tiles(image, grid)
    assert tiles.shape[1:] == (2, 128, 128)
    torch.testing.assert_close(stitch_tiles(tiles, grid), image)


def test_tiles_cover_image_with_overlap():
    grid = tile_grid((520, 704), tile=256, overlap=0.1)
    ys = sorted({y for y, _ in grid.starts})
    xs = sorted({x for _, x in grid.starts})
    assert ys[0] == 0 and ys[-1] == 520 - 256 and xs[-1] == 704 - 256
    assert all(b - a <= 256 * 0.9 + 1 for a, b in zip(ys, ys[1:]))


def test_small_image_is_one_padded_tile():
    grid = tile_grid((40, 90), tile=128)
    assert grid.starts == ((0, 0),) and grid.padded_shape == (128, 128)


def test_blend_weight_positive_and_peaks_in_middle():
    w = blend_weight(64)
    assert (w > 0).all() and w[32, 32] == 1 and w[0, 0] < w[8, 8]


def test_bad_arguments():
    with pytest.raises(ValueError, match="tile"):
        tile_grid((10, 10), tile=0)
    with pytest.raises(ValueError, match="overlap"):
        tile_grid((10, 10), tile=8, overlap=0.9)
    grid = tile_grid((300, 300), tile=128)
    with pytest.raises(ValueError, match="tiles: expected"):
        stitch_tiles(torch.zeros(1, 1, 128, 128), grid)


@pytest.mark.parametrize("shape", [(520, 704), (100, 300), (1022, 1024)])
def test_aligned_starts_are_multiples(shape):
    grid = tile_grid(shape, tile=256, overlap=0.1, align=16)
    assert all(y % 16 == 0 and x % 16 == 0 for y, x in grid.starts)
    assert all(s % 16 == 0 for s in grid.padded_shape)
    ys = sorted({y for y, _ in grid.starts})
    assert ys[-1] + 256 == grid.padded_shape[0]


def test_align_must_divide_tile():
    with pytest.raises(ValueError, match="align"):
        tile_grid((300, 300), tile=100, align=16)
