import torch
import torch.nn.functional as F

from flowseg.model.unet import FLOW_SCALE, NetOutput
from flowseg.training.losses import segmentation_loss


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(2, 8, 8, dtype=torch.int32)
    labels[0, 2:5, 2:6] = 1
    labels[1, 4:8, 0:3] = 7
    targets = torch.randn(2, 2, 8, 8, generator=g) * (labels > 0)[:, None]
    output = NetOutput(torch.randn(2, 2, 8, 8, generator=g), torch.randn(2, 8, 8, generator=g),
                       torch.randn(2, 3, 8, 8, generator=g))
    return output, targets, labels, torch.tensor([2, 0])


def test_terms_match_their_definitions():
    output, targets, labels, classes = _batch()
    terms = segmentation_loss(output, targets, labels, classes, flow_weight=0.5,
                              cellprob_weight=1.0, class_weight=0.25)
    torch.testing.assert_close(terms.flow, ((output.flows - FLOW_SCALE * targets) ** 2).mean())
    torch.testing.assert_close(terms.cellprob, F.binary_cross_entropy_with_logits(
        output.cellprob, (labels > 0).float()))
    cells = labels > 0
    logits = output.class_logits.permute(0, 2, 3, 1)[cells]
    target = classes[:, None, None].expand(-1, 8, 8)[cells]
    torch.testing.assert_close(terms.classes, F.cross_entropy(logits, target))
    torch.testing.assert_close(terms.total, 0.5 * terms.flow + terms.cellprob + 0.25 * terms.classes)


def test_background_class_logits_do_not_matter():
    output, targets, labels, classes = _batch()
    before = segmentation_loss(output, targets, labels, classes).classes
    changed = output.class_logits.clone()
    changed[(labels == 0)[:, None].expand_as(changed)] = 50.0
    after = segmentation_loss(NetOutput(output.flows, output.cellprob, changed), targets, labels,
                              classes).classes
    torch.testing.assert_close(before, after)


def test_no_cells_gives_finite_zero_class_loss():
    output, targets, labels, classes = _batch()
    terms = segmentation_loss(output, targets * 0, labels * 0, classes)
    assert terms.classes.item() == 0.0 and torch.isfinite(terms.total)
    assert terms.as_floats()["classes"] == 0.0


def test_perfect_flows_have_zero_flow_loss():
    output, targets, labels, classes = _batch()
    perfect = NetOutput(targets * FLOW_SCALE, output.cellprob, output.class_logits)
    assert segmentation_loss(perfect, targets, labels, classes).flow.item() == 0.0
