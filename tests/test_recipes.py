"""`--recipe` expands to the documented settings; explicit flags win; bad values are one-line errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from micronet_onnx.cli.app import app
from micronet_onnx.training.config import TrainConfig
from micronet_onnx.training.recipes import RECIPES, apply_recipe


@pytest.mark.parametrize("name,dataset,model", [("paper-c100", "cifar100", "micronet-c100"),
                                                ("paper-c10", "cifar10", "micronet-c10")])
def test_recipe_expands_to_the_reference_settings(name, dataset, model):
    cfg = apply_recipe(TrainConfig(), name, set()).validate()
    assert (cfg.dataset, cfg.model, cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == \
        (dataset, model, 250, 128, 0.1, 0.9, 5e-4)
    assert cfg.augment and cfg.ternary and (cfg.ternary_epochs, cfg.freeze_epochs) == (20, 15)
    e = cfg.ec2t
    assert (e["lambda_gain"], e["centroid_init"], e["lr_weights"], e["lr_centroids"], e["lr_other"],
            e["wd_other"], e["wn_grad"]) == (0.15, 0.45, 1e-4, 1e-5, 1e-4, 5e-6, "ttq")


def test_explicit_flags_override_the_recipe():
    base = TrainConfig(epochs=3, ec2t=dict(TrainConfig().ec2t, lambda_gain=0.3))
    cfg = apply_recipe(base, "paper-c100", {"epochs", "lambda_gain"})
    assert cfg.epochs == 3 and cfg.ec2t["lambda_gain"] == 0.3 and cfg.batch_size == 128
    assert set(RECIPES) == {"paper-c100", "paper-c10"}


@pytest.mark.parametrize("args,text", [(["--recipe", "paper-c1000"], "--recipe must be one of"),
                                       (["--amp", "fp8"], "--amp must be one of")])
def test_bad_values_are_one_line_errors(tmp_path, args, text):
    r = CliRunner().invoke(app, ["train", "-o", str(tmp_path / "x.pt"), *args])
    assert r.exit_code == 2, r.output
    assert text in r.output and "Traceback" not in r.output
