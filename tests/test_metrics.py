"""Tests for pat_nbdev.metrics: hand-computed values, torchmetrics cross-checks, edge cases, and DDP sync on gloo."""
import math
import multiprocessing as mp
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassJaccardIndex

from pat_nbdev.metrics import ConfusionMatrix, as_labels, confusion_counts, metrics_from_confusion

IGNORE = 255


def reference(preds, labels, n_classes, ignore_index=IGNORE):
    "Whole-split metrics from torchmetrics, for comparison."
    kw = dict(num_classes=n_classes, ignore_index=ignore_index)
    return dict(
        matrix=MulticlassConfusionMatrix(**kw)(preds, labels),
        iou=MulticlassJaccardIndex(average="none", zero_division=math.nan, **kw)(preds, labels),
        miou=100 * MulticlassJaccardIndex(average="macro", **kw)(preds, labels).item(),
        pix_acc=100 * MulticlassAccuracy(average="micro", **kw)(preds, labels).item())


def accumulate(batches, n_classes, ignore_index=IGNORE):
    cm = ConfusionMatrix(n_classes, ignore_index)
    for p, t in batches: cm.update(p, t)
    return cm


def assert_matches_torchmetrics(preds, labels, n_classes, batch=2):
    cm = accumulate([(preds[i:i + batch], labels[i:i + batch]) for i in range(0, len(labels), batch)], n_classes)
    ours, ref = cm.compute(), reference(preds, labels, n_classes)
    assert torch.equal(cm.matrix, ref["matrix"])
    torch.testing.assert_close(torch.tensor(ours["iou_per_class"], dtype=torch.float32), ref["iou"], equal_nan=True)
    assert ours["miou"] == pytest.approx(ref["miou"], abs=1e-4)
    assert ours["pix_acc"] == pytest.approx(ref["pix_acc"], abs=1e-4)
    return ours


def test_hand_computed_example():
    # labels / predictions of 6 pixels, classes 0..2, one ignored pixel
    target = torch.tensor([[0, 0, 1, 1, 2, IGNORE]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 2]])
    out = ConfusionMatrix(3).update(pred, target).compute(groups=dict(head=[0, 1], tail=[2]))
    # class 0: TP 1, FP 1 (the 2 taken for 0), FN 1 -> IoU 1/3, Dice 1/2
    # class 1: TP 2, FP 1, FN 0 -> IoU 2/3, Dice 4/5;  class 2: TP 0, FN 1 -> IoU 0, Dice 0
    assert out["iou_per_class"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert out["miou"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 0) / 3)
    assert out["pix_acc"] == pytest.approx(100 * 3 / 5)
    assert out["dice_err"] == pytest.approx(1 - (1 / 2 + 4 / 5 + 0) / 3)
    assert out["miou_head"] == pytest.approx(50.0) and out["miou_tail"] == pytest.approx(0.0)
    assert out["n_pixels"] == 5


@pytest.mark.parametrize("seed", range(4))
def test_random_inputs_match_torchmetrics(seed):
    g = torch.Generator().manual_seed(seed)
    n_classes = [3, 5, 20, 14][seed]
    labels = torch.randint(0, n_classes, (6, 17, 23), generator=g)
    labels[torch.rand(labels.shape, generator=g) < 0.1] = IGNORE
    preds = torch.where(torch.rand(labels.shape, generator=g) < 0.6, labels.clamp(max=n_classes - 1),
                        torch.randint(0, n_classes, labels.shape, generator=g))
    assert_matches_torchmetrics(preds, labels, n_classes)


def test_skewed_labels_with_absent_classes_match_torchmetrics():
    g = torch.Generator().manual_seed(1)
    probs = torch.tensor([0.7, 0.2, 0.07, 0.03, 0.0, 0.0])  # classes 4 and 5 never labelled
    labels = torch.multinomial(probs, 6 * 32 * 32, replacement=True, generator=g).view(6, 32, 32)
    preds = torch.where(torch.rand(labels.shape, generator=g) < 0.7, labels, torch.zeros_like(labels))
    preds[0, 0, 0] = 4  # class 4 is predicted once (a false positive), class 5 never appears at all
    out = assert_matches_torchmetrics(preds, labels, 6)
    assert out["iou_per_class"][4] == 0.0 and math.isnan(out["iou_per_class"][5])
    present = [v for v in out["iou_per_class"] if not math.isnan(v)]
    assert out["miou"] == pytest.approx(100 * sum(present) / 5)  # class 5 left out, class 4 counts as 0


def test_logits_are_argmaxed_and_give_cross_entropy():
    g = torch.Generator().manual_seed(2)
    logits, labels = torch.randn(4, 5, 9, 11, generator=g), torch.randint(0, 5, (4, 9, 11), generator=g)
    labels[1] = IGNORE
    cm = accumulate([(logits[:3], labels[:3]), (logits[3:], labels[3:])], 5)
    assert torch.equal(cm.matrix, confusion_counts(logits.argmax(1), labels, 5))
    assert cm.compute()["ce"] == pytest.approx(F.cross_entropy(logits, labels, ignore_index=IGNORE).item(), rel=1e-6)
    cm.update(labels, labels)  # one batch given as labels: the cross-entropy of the split is unknown
    assert math.isnan(cm.compute()["ce"])


def test_perfect_prediction():
    labels = torch.randint(0, 4, (3, 8, 8))
    labels[0, 0] = IGNORE
    preds = torch.where(labels == IGNORE, torch.zeros_like(labels), labels)
    out = ConfusionMatrix(4).update(preds, labels).compute()
    assert out["miou"] == 100.0 and out["pix_acc"] == 100.0 and out["dice_err"] == 0.0


def test_all_wrong_prediction():
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    out = ConfusionMatrix(2).update(torch.ones_like(labels), labels).compute()
    assert out["miou"] == 0.0 and out["pix_acc"] == 0.0 and out["dice_err"] == 1.0


def test_all_ignored_batches_add_nothing():
    labels = torch.randint(0, 3, (2, 8, 8))
    preds = torch.randint(0, 3, (2, 8, 8))
    cm = ConfusionMatrix(3).update(preds, labels)
    before = cm.compute()
    cm.update(torch.randint(0, 3, (2, 8, 8)), torch.full((2, 8, 8), IGNORE))
    assert cm.compute()["iou_per_class"] == before["iou_per_class"] and cm.compute()["n_pixels"] == 128
    empty = ConfusionMatrix(3).update(preds, torch.full((2, 8, 8), IGNORE)).compute()
    assert math.isnan(empty["miou"]) and math.isnan(empty["pix_acc"]) and math.isnan(empty["dice_err"])
    assert all(math.isnan(v) for v in empty["iou_per_class"])
    # torchmetrics agrees that there is nothing to score
    assert torch.equal(reference(preds, torch.full((2, 8, 8), IGNORE), 3)["matrix"], torch.zeros(3, 3, dtype=torch.long))


def test_batching_and_order_do_not_matter():
    g = torch.Generator().manual_seed(3)
    preds, labels = torch.randint(0, 4, (8, 10, 10), generator=g), torch.randint(0, 4, (8, 10, 10), generator=g)
    one = accumulate([(preds, labels)], 4).compute()
    many = accumulate([(preds[i:i + 1], labels[i:i + 1]) for i in torch.randperm(8, generator=g)], 4).compute()
    assert one == many


def test_reset():
    cm = ConfusionMatrix(3).update(torch.zeros(1, 4, 4, dtype=torch.long), torch.ones(1, 4, 4, dtype=torch.long))
    cm.reset()
    assert cm.matrix.sum() == 0 and math.isnan(cm.compute()["miou"])


def test_dice_is_consistent_with_iou():
    g = torch.Generator().manual_seed(4)
    preds, labels = torch.randint(0, 6, (4, 16, 16), generator=g), torch.randint(0, 5, (4, 16, 16), generator=g)
    out = ConfusionMatrix(7).update(preds, labels).compute()
    for iou, dice in zip(out["iou_per_class"], out["dice_per_class"]):
        if math.isnan(iou): assert math.isnan(dice)
        else: assert dice == pytest.approx(2 * iou / (1 + iou))
    assert 0 <= out["dice_err"] <= 1


def test_groups():
    matrix = torch.tensor([[5, 5, 0, 0], [0, 10, 0, 0], [0, 0, 0, 0], [0, 0, 2, 0]])
    out = metrics_from_confusion(matrix, groups=dict(head=[1], body=[0], tail=[2, 3], none=[]))
    # IoU: class 0 5/10, class 1 10/15, class 2 0/2, class 3 0/2
    assert out["miou_head"] == pytest.approx(100 * 10 / 15)
    assert out["miou_body"] == pytest.approx(50.0)
    assert out["miou_tail"] == pytest.approx(0.0)
    assert math.isnan(out["miou_none"])
    with pytest.raises(ValueError, match="outside"): metrics_from_confusion(matrix, groups=dict(tail=[4]))


def test_ignore_index_none_and_custom():
    labels = torch.tensor([[0, 1, 2]])
    preds = torch.tensor([[0, 1, 1]])
    assert ConfusionMatrix(3, ignore_index=None).update(preds, labels).compute()["n_pixels"] == 3
    assert ConfusionMatrix(3, ignore_index=2).update(preds, labels).compute()["pix_acc"] == 100.0


def test_bad_input_is_refused():
    labels = torch.randint(0, 3, (2, 4, 4))
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="integer labels"): cm.update(labels.float(), labels)
    with pytest.raises(ValueError, match="n_classes=3"): cm.update(torch.randn(2, 4, 4, 4), labels)
    with pytest.raises(ValueError, match="do not match"): cm.update(torch.randint(0, 3, (2, 4, 5)), labels)
    with pytest.raises(ValueError, match="labels must lie"): cm.update(labels, torch.full((2, 4, 4), 3))
    with pytest.raises(ValueError, match="predictions must lie"): cm.update(torch.full((2, 4, 4), -1), labels)
    with pytest.raises(ValueError, match="n_classes"): ConfusionMatrix(0)
    assert cm.matrix.sum() == 0  # nothing was counted by the refused updates


def test_as_labels_accepts_both_forms():
    labels = torch.randint(0, 3, (2, 5, 6))
    logits = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    assert torch.equal(as_labels(logits, labels, 3), labels)
    assert as_labels(labels, labels, 3) is labels


def test_sync_without_process_group_is_a_noop():
    labels = torch.randint(0, 3, (2, 4, 4))
    cm = ConfusionMatrix(3).update(labels, labels)
    assert torch.equal(cm.sync().matrix, confusion_counts(labels, labels, 3))


def _ddp_worker(rank, world, init_file, queue):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        logits, labels = torch.randn(6, 4, 8, 8, generator=g), torch.randint(0, 4, (6, 8, 8), generator=g)
        labels[0, :3] = IGNORE
        cm = ConfusionMatrix(4)
        for i in range(rank, 6, world): cm.update(logits[i:i + 1], labels[i:i + 1])  # each process its shard
        out = cm.sync().compute()
        refused = []
        for again in (cm.sync, lambda: cm.update(logits[:1], labels[:1])):  # both would count data twice
            try: again(); refused.append(False)
            except RuntimeError: refused.append(True)
        queue.put((rank, out, all(refused)))
    finally:
        dist.destroy_process_group()


def test_sync_sums_over_two_gloo_processes(tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, tmp_path / "init", queue)) for r in range(2)]
    for p in procs: p.start()
    try: results = [queue.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive(): p.terminate()
    assert all(p.exitcode == 0 for p in procs)
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 4, 8, 8, generator=g), torch.randint(0, 4, (6, 8, 8), generator=g)
    labels[0, :3] = IGNORE
    expected = ConfusionMatrix(4).update(logits, labels).compute()
    for rank, out, refused in results:
        assert refused, "a second sync, or an update after sync, must be refused"
        assert out["iou_per_class"] == pytest.approx(expected["iou_per_class"])
        assert out["miou"] == pytest.approx(expected["miou"]) and out["n_pixels"] == expected["n_pixels"]
        assert out["ce"] == pytest.approx(expected["ce"])

