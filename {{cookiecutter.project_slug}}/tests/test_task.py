import pytest
import torch

from {{ cookiecutter.package_name }}.lib import names, task


def test_segmentation_scores_on_hand_computed_counts():
    # 1 foreground class: tp=6, fp=2, fn=4 -> dice 12/18, iou 6/12; 90 of 100 pixels right.
    totals = {"tp": torch.tensor([6.0]), "fp": torch.tensor([2.0]), "fn": torch.tensor([4.0]),
              "tn": torch.tensor([88.0]), "correct": torch.tensor(90.0), "total": torch.tensor(100.0)}
    assert task.scores(task.Task("segmentation", 2), totals) == pytest.approx(
        {"dice": 2 / 3, "iou": 0.5, "pixel_accuracy": 0.9})


def test_multiclass_counts_per_sample_and_the_class_mean():
    # Two 1x4 images, classes 0..2. Image 0: truth 1 1 2 0, prediction 1 2 2 0. Image 1: truth 0 0 0 0, all right.
    y = torch.tensor([[[1, 1, 2, 0]], [[0, 0, 0, 0]]])
    pred = torch.tensor([[[1, 2, 2, 0]], [[0, 0, 0, 0]]])
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float()  # (B, C, H, W)
    stats = task.sample_stats(logits, y, task.Task("segmentation", 3))
    assert stats["tp"].tolist() == [[1, 1], [0, 0]] and stats["fp"].tolist() == [[0, 1], [0, 0]]
    assert stats["fn"].tolist() == [[1, 0], [0, 0]] and stats["correct"].tolist() == [3, 4]
    # class 1: dice 2/3, iou 1/2; class 2: dice 2/3, iou 1/2 -> means; 7 of 8 pixels right
    assert task.scores(task.Task("segmentation", 3), task.reduce(stats)) == pytest.approx(
        {"dice": 2 / 3, "iou": 0.5, "pixel_accuracy": 7 / 8})


def test_binary_perfect_empty_and_absent_class():
    y, binary = torch.zeros(2, 4, 4, dtype=torch.long), task.Task("segmentation", 2)
    y[:, :2] = 1
    perfect = torch.where(y[:, None] == 1, 5.0, -5.0)  # binary logits (B, 1, H, W)
    assert task.scores(binary, task.reduce(task.sample_stats(perfect, y, binary)))["dice"] == 1
    empty = torch.full_like(perfect, -5.0)
    assert task.scores(binary, task.reduce(task.sample_stats(empty, y, binary)))["dice"] == 0
    background = torch.zeros_like(y)  # foreground absent from truth and prediction: scores 1
    assert task.scores(binary, task.reduce(task.sample_stats(empty, background, binary)))["dice"] == 1


@pytest.mark.parametrize("task_name", names.TASKS)
@pytest.mark.parametrize("num_classes", [2, 3])
def test_every_loss_prefers_the_right_answer(task_name, num_classes):
    t = task.Task(task_name, num_classes)
    for name in names.LOSSES[task_name]:
        loss = task.make_loss(t, name)
        shape = (2, 8, 8) if task_name == "segmentation" else (6,)
        y = torch.randint(0, num_classes, shape, generator=torch.Generator().manual_seed(0))
        if t.outputs == 1:
            good = torch.where(y[:, None] == 1, 4.0, -4.0)
        else:
            good = torch.nn.functional.one_hot(y, num_classes).movedim(-1, 1).float() * 8 - 4
        assert loss(good, y) < loss(-good, y), name
        assert task.cross_entropy(good, y, t) < task.cross_entropy(-good, y, t)


def test_unknown_loss_lists_the_task_s_losses():
    with pytest.raises(ValueError, match="train.loss='hinge'.*dice, bce, focal, dice_bce"):
        task.make_loss(task.Task("segmentation", 2), "hinge")
    with pytest.raises(ValueError, match="train.loss='dice'.*classification losses: ce"):
        task.make_loss(task.Task("classification", 3), "dice")


def test_the_evaluation_loop_keeps_per_sample_counts_loss_and_predictions():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 2.0]])  # (N, C)
    y = torch.tensor([0, 1, 1, 1])
    batches = [(logits[:3], y[:3]), (logits[3:], y[3:])]  # fn is the identity: x are the logits
    t = task.Task("classification", 2)
    out = task.score_batches(lambda x: x, batches, t, loss_fn=torch.nn.CrossEntropyLoss(), keep_predictions=True)
    assert out["stats"]["correct"].tolist() == [1, 1, 0, 1] and out["predictions"].tolist() == [0, 1, 0, 1]
    assert task.scores(t, task.reduce(out["stats"])) == {"accuracy": 0.75}
    assert out["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item())
