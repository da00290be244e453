import pytest
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


def _loss_and_grads(output, targets, labels, classes, ignore):
    leaves = [t.clone().requires_grad_(True) for t in (output.flows, output.cellprob,
                                                       output.class_logits)]
    terms = segmentation_loss(NetOutput(*leaves), targets, labels, classes, ignore=ignore,
                              class_weight=0.5)
    terms.total.backward()
    return terms, [leaf.grad for leaf in leaves]


def _ignore_mask():
    ignore = torch.zeros(2, 8, 8, dtype=torch.bool)
    ignore[0, 0:4, 0:8] = True      # half a cell of image 0, and background
    ignore[1, 5:8, 0:2] = True      # part of the cell of image 1
    return ignore


def test_ignored_pixels_contribute_no_loss_and_no_gradient():
    """Changing targets, labels or predictions at ignored pixels changes neither the loss terms
    nor any gradient; the gradient at ignored pixels is exactly 0."""
    output, targets, labels, classes = _batch()
    ignore = _ignore_mask()
    terms, grads = _loss_and_grads(output, targets, labels, classes, ignore)
    g = torch.Generator().manual_seed(5)
    changed_labels = torch.where(ignore, torch.randint(0, 9, labels.shape, generator=g,
                                                       dtype=torch.int32), labels)
    changed_targets = torch.where(ignore[:, None], torch.randn(targets.shape, generator=g), targets)
    changed_output = NetOutput(
        torch.where(ignore[:, None], torch.randn(output.flows.shape, generator=g) * 50, output.flows),
        torch.where(ignore, torch.randn(output.cellprob.shape, generator=g) * 50, output.cellprob),
        torch.where(ignore[:, None], torch.randn(output.class_logits.shape, generator=g) * 50,
                    output.class_logits))
    terms2, grads2 = _loss_and_grads(changed_output, changed_targets, changed_labels, classes, ignore)
    for name in ("total", "flow", "cellprob", "classes"):
        torch.testing.assert_close(getattr(terms2, name), getattr(terms, name), rtol=0, atol=0)
    for a, b in zip(grads, grads2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all((gr.movedim(1, -1)[ignore] == 0).all() for gr in (grads[0], grads[2]))
    assert (grads[1][ignore] == 0).all()
    assert any((gr != 0).any() for gr in grads)


def test_no_ignored_pixel_equals_no_mask_and_all_ignored_is_zero():
    output, targets, labels, classes = _batch()
    plain = segmentation_loss(output, targets, labels, classes)
    empty = segmentation_loss(output, targets, labels, classes,
                              ignore=torch.zeros(labels.shape, dtype=torch.bool))
    assert plain.as_floats() == empty.as_floats()
    full, grads = _loss_and_grads(output, targets, labels, classes,
                                  torch.ones(labels.shape, dtype=torch.bool))
    assert full.as_floats() == {"loss": 0.0, "flow": 0.0, "cellprob": 0.0, "classes": 0.0}
    assert all((g == 0).all() for g in grads)


def test_ignore_terms_are_means_over_all_pixels():
    """Ignored pixels count as zero loss in the flow and cell-probability means (every crop
    weighs the same); the class term is a mean over the cell pixels not ignored."""
    output, targets, labels, classes = _batch()
    ignore = _ignore_mask()
    keep = ~ignore
    terms = segmentation_loss(output, targets, labels, classes, ignore=ignore)
    sq = (output.flows - FLOW_SCALE * targets) ** 2 * keep[:, None]
    torch.testing.assert_close(terms.flow, sq.sum() / sq.numel())
    bce = F.binary_cross_entropy_with_logits(output.cellprob, (labels > 0).float(), reduction="none")
    torch.testing.assert_close(terms.cellprob, (bce * keep).sum() / bce.numel())
    cells = (labels > 0) & keep
    logits = output.class_logits.permute(0, 2, 3, 1)[cells]
    target = classes[:, None, None].expand(-1, 8, 8)[cells]
    torch.testing.assert_close(terms.classes, F.cross_entropy(logits, target))


def test_ignore_of_another_shape_is_refused():
    output, targets, labels, classes = _batch()
    with pytest.raises(ValueError, match="ignore"):
        segmentation_loss(output, targets, labels, classes, ignore=torch.zeros(2, 8, 7, dtype=torch.bool))
