import numpy as np
import pytest
import torch

from flowseg.flows import euler_steps
from flowseg.flows.follow import pointer_jump, successors


@pytest.mark.parametrize("step, niter", [(1.0, 4), (0.5, 7)])
def test_constant_flow_moves_points_exactly(step, niter):
    flows = torch.zeros(2, 2, 30, 40)
    flows[:, 0], flows[:, 1] = 0.25, -0.5          # dy, dx
    start = torch.tensor([[[10.0, 20.0], [3.5, 30.25]], [[12.0, 12.0], [20.0, 35.0]]])
    end = euler_steps(start, flows, niter=niter, step=step)
    expected = start + niter * step * torch.tensor([0.25, -0.5])
    torch.testing.assert_close(end, expected, atol=1e-5, rtol=0)


def test_euler_samples_the_flow_at_the_point():
    flows = torch.zeros(1, 2, 5, 6)
    flows[0, 1, 2, 3] = 1.0                         # dx = 1 only at pixel (y=2, x=3)
    end = euler_steps(torch.tensor([[[2.0, 3.0], [2.0, 2.0], [2.0, 2.5]]]), flows, niter=1)
    torch.testing.assert_close(end[0], torch.tensor([[2.0, 4.0], [2.0, 2.0], [2.0, 3.0]]))


def test_euler_clamps_at_the_border():
    flows = torch.ones(1, 2, 8, 8)
    end = euler_steps(torch.tensor([[[6.0, 5.0]]]), flows, niter=5)
    torch.testing.assert_close(end, torch.tensor([[[7.0, 7.0]]]))


def _grid(flow, fg):
    return torch.as_tensor(np.asarray(flow, np.float32))[None], torch.as_tensor(fg)[None]


def test_successor_takes_the_nearest_direction():
    fg = np.ones((5, 5), bool)
    for (dy, dx), (ey, ex) in [((0.0, 1.0), (2, 3)), ((0.6, 0.8), (3, 3)), ((-1.0, 0.1), (1, 2)),
                               ((0.9, -0.3), (3, 2)), ((0.0, 0.0), (2, 2))]:
        flows = np.zeros((2, 5, 5), np.float32)
        flows[:, 2, 2] = dy, dx
        pixels, succ = successors(*_grid(flows, fg))
        assert pixels[succ[12]].item() == ey * 5 + ex


def test_successor_never_leaves_foreground_or_image():
    fg = np.zeros((4, 4), bool)
    fg[1, :] = True
    fg[2, 3] = True
    flows = np.zeros((2, 4, 4), np.float32)
    flows[:, 1, 0] = 0.0, -1.0            # points out of the image: stays
    flows[:, 1, 1] = 0.9, 0.44            # down (background) -> next closest: down-right (bg) -> right
    flows[:, 1, 2] = 0.8, 0.6             # down-right is foreground (2, 3)
    pixels, succ = successors(*_grid(flows, fg))
    moved = dict(zip(pixels.tolist(), pixels[succ].tolist()))
    assert moved[4] == 4 and moved[5] == 6 and moved[6] == 11


def test_pointer_jump_equals_repeated_steps():
    rng = np.random.default_rng(0)
    succ = torch.from_numpy(rng.integers(0, 50, 50))
    walked = torch.arange(50)
    for _ in range(8):
        walked = succ[walked]
    torch.testing.assert_close(pointer_jump(succ, 3), walked)


def test_pointer_jump_per_image_counts():
    rng = np.random.default_rng(1)
    first, second = torch.from_numpy(rng.integers(0, 25, 25)), torch.from_numpy(rng.integers(0, 25, 25))
    joint = torch.cat([first, second + 25])
    jumps = torch.tensor([3] * 25 + [1] * 25)
    torch.testing.assert_close(pointer_jump(joint, jumps),
                               torch.cat([pointer_jump(first, 3), pointer_jump(second, 1) + 25]))
