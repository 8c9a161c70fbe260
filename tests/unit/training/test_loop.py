"""medseg.training.loop: one training step."""
import pytest


def test_a_nan_loss_is_a_medseg_error_that_names_the_fix():
    import torch

    from medseg.errors import MedsegError
    from medseg.models import NetworkSpec, build_unet
    from medseg.training.loop import Step, dice_ce_loss, training_step
    from medseg.training.optim import build_optimizer

    net = build_unet(NetworkSpec(1, 3, [4, 8, 16], [1, 2, 2]), seed=0)
    image = torch.full((1, 1, 8, 8, 8), float("nan"))
    label = torch.zeros((1, 1, 8, 8, 8), dtype=torch.long)
    with pytest.raises(MedsegError, match="Lower train.lr") as e:
        training_step(net, image, label, Step(dice_ce_loss(), build_optimizer(net.parameters(), "sgd", 0.01), None,
                                              torch.device("cpu")))
    assert e.value.path == "train.lr"
