"""Models, the training loop, splits and `wellwatch train` on tiny synthetic data."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
import torch

from wellwatch.training.checkpoint import load_checkpoint
from wellwatch.training.dataset import save_dataset
from wellwatch.training.models import PretrainedUnavailable, build_model, cam_layer, penultimate
from wellwatch.training.training_run import train_run
from wellwatch.training.splits import grouped_kfold, grouped_split
from wellwatch.training.classifier_loop import TrainConfig, augment, seed_defaults, train_classifier

from .test_training_data import blob_crops, blob_dataset

pytestmark = pytest.mark.unit


def test_cropnet8_averages_the_eight_views_only_when_evaluating():
    torch.manual_seed(0)
    m = build_model("cropnet8", 1, 2, input_size=32).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        ref = m(x)
        views = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
        for v in views + [torch.flip(v, dims=(3,)) for v in views]:
            torch.testing.assert_close(m(v), ref, atol=1e-5, rtol=1e-4)  # any rotation/flip: the same call
        m.dihedral = False
        one = m(x)
        assert not torch.allclose(one, ref, atol=1e-4)  # one view differs: the 8-view mean is not a no-op
        manual = torch.stack([m(v) for v in views + [torch.flip(v, dims=(3,)) for v in views]]).mean(0)
        torch.testing.assert_close(manual, ref, atol=1e-5, rtol=1e-4)
    m.train()
    m.dihedral = True
    assert m(x).shape == (3, 2)  # training: one view per sample (the augmentation draws it)


def test_photometric_augmentation_changes_brightness_contrast_and_blur_reproducibly():
    from wellwatch.training.classifier_loop import photometric

    x = torch.from_numpy(blob_crops(64, 24, 4)[0])
    a = photometric(x.clone(), torch.Generator().manual_seed(1))
    b = photometric(x.clone(), torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    mean_shift = (a.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))).abs()
    sd_ratio = a.std(dim=(1, 2, 3)) / x.std(dim=(1, 2, 3))
    assert mean_shift.max() > 0.1 and (sd_ratio.max() > 1.1 or sd_ratio.min() < 0.9)
    # blur smooths pixel noise: the neighbour-difference energy falls well below the gain alone for some crops
    rough = lambda t: (t[..., 1:, :] - t[..., :-1, :]).pow(2).mean(dim=(1, 2, 3)) / t.std(dim=(1, 2, 3)) ** 2
    assert (rough(a) < 0.6 * rough(x)).any()


def test_patience_zero_trains_every_epoch_and_keeps_the_last():
    x, y, _ = blob_crops(64, 16, 8)
    cfg = TrainConfig(arch="cropnet", epochs=3, batch_size=16, lr=1e-2, patience=0, schedule="cosine",
                      label_smoothing=0.1, photometric=True)
    model, h = train_classifier(x[:48], y[:48], x[48:], y[48:], cfg)
    assert len(h.train_loss) == 3 and h.best_epoch == 2
    with pytest.raises(ValueError, match="schedule 'steps'"):
        train_classifier(x[:48], y[:48], x[48:], y[48:], TrainConfig(arch="cropnet", epochs=1, schedule="steps"))


def test_crops_from_boxes_default_to_cropnet8_and_cell_crops_keep_ogawa():
    from wellwatch.training.training_run import default_arch

    ds = blob_dataset(16, 16, 4)
    assert default_arch(ds) == "ogawa"
    ds.meta["provenance"] = {"source": "Pascal VOC boxes"}
    assert default_arch(ds) == "cropnet8"
    c = seed_defaults("cropnet8")
    assert (c.patience, c.schedule, c.photometric, c.label_smoothing) == (0, "cosine", True, 0.1)


@pytest.mark.parametrize("arch,size", [("tiny", 32), ("cropnet", 32), ("cropnet8", 32), ("ogawa", 48), ("resnet18", 32), ("squeezenet1_1", 48),
                                       ("inception_v3", 75)])
def test_architectures_take_grey_input_and_expose_features(arch, size):
    torch.manual_seed(0)
    m = build_model(arch, 1, 2, input_size=size).eval()
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        assert m(x).shape == (2, 2)
        f = penultimate(m, x)
    assert f.ndim == 2 and f.shape[0] == 2 and f.shape[1] >= 16
    assert cam_layer(m) is not None


def test_inception_refuses_too_small_input():
    with pytest.raises(ValueError, match="at least 75 px"):
        build_model("inception_v3", 1, 2, input_size=64)


def test_seed_hyperparameters_are_the_defaults():
    c = seed_defaults("resnet18")
    assert (c.lr, c.betas, c.weight_decay, c.batch_size, c.epochs) == (1e-5, (0.5, 0.999), 1e-5, 4, 30)
    o = seed_defaults("ogawa", epochs=7)
    assert (o.lr, o.batch_size, o.patience, o.epochs) == (1e-4, 32, 5, 7)


def test_pretrained_fails_clearly_for_ogawa():
    with pytest.raises(PretrainedUnavailable, match="no ImageNet weights exist for architecture 'ogawa'"):
        build_model("ogawa", 1, 2, input_size=64, pretrained="imagenet")


def test_pretrained_fails_quickly_and_clearly_offline(tmp_path, monkeypatch):
    """No network: the torchvision download fails at once with a message saying what to do."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache

    def refuse(*a, **k):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    t0 = time.perf_counter()
    with pytest.raises(PretrainedUnavailable, match=r"cannot load ImageNet weights .*resnet18.*without --pretrained"):
        build_model("resnet18", 1, 2, pretrained="imagenet")
    assert time.perf_counter() - t0 < 10


def test_cli_pretrained_offline_exits_2_with_message(tmp_path, monkeypatch, capsys):
    from wellwatch.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(OSError("offline (test)")))
    save_dataset(blob_dataset(40, 32, 8), tmp_path / "ds")
    rc = main(["train", str(tmp_path / "ds"), "--out", str(tmp_path / "run"), "--arch", "squeezenet1_1",
               "--pretrained", "imagenet", "--epochs", "1", "--quiet"])
    assert rc == 2
    assert "cannot load ImageNet weights" in capsys.readouterr().err
    assert not (tmp_path / "run" / "best.pt").exists()


def test_cli_arch_too_big_for_the_dataset_exits_2_naming_those_that_fit(tmp_path, caplog):
    from wellwatch.cli import main

    save_dataset(blob_dataset(40, 32, 8), tmp_path / "ds")  # 32 px tiles; ogawa needs 40
    rc = main(["train", str(tmp_path / "ds"), "--out", str(tmp_path / "run"), "--arch", "ogawa", "--epochs", "1",
               "--quiet"])
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    err = record.getMessage()
    assert rc == 2 and record.exc_info is None and len(err.splitlines()) == 1, err
    assert "--arch ogawa: needs inputs of at least 40 px, this dataset's are 32 px" in err
    assert "resnet18" in err and "inception_v3" not in err.split("choose")[1]


def test_augment_rotates_and_flips_each_sample_independently():
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4).repeat(50, 1, 1, 1)
    out = augment(x, torch.Generator().manual_seed(0))
    # each output is one of the 8 symmetries of its input (values preserved), and they differ across samples
    for i in range(len(x)):
        variants = [torch.rot90(x[i], k, (1, 2)) for k in range(4)]
        variants += [torch.flip(v, (2,)) for v in variants]
        assert any(torch.equal(out[i], v) for v in variants)
    distinct = {tuple(out[i].flatten().tolist()) for i in range(0, len(x), 2)}
    assert len(distinct) == 8


def test_grouped_splits_never_share_a_group():
    groups = np.repeat([f"g{i}" for i in range(20)], 7)
    tr, va, te = grouped_split(groups, (0.8, 0.1, 0.1), 0)
    assert (tr.astype(int) + va + te == 1).all()
    assert not set(groups[tr]) & set(groups[te]) and not set(groups[va]) & set(groups[te])
    folds = grouped_kfold(groups, 5, 0)
    assert (np.sum(folds, axis=0) == 1).all()
    for f in folds:
        assert not set(groups[f]) & set(groups[~f])


def test_fixed_seed_gives_the_same_model():
    x, y, _ = blob_crops(64, 16, 8)
    cfg = TrainConfig(arch="tiny", epochs=2, batch_size=16, seed=3)
    a, _ = train_classifier(x[:48], y[:48], x[48:], y[48:], cfg)
    b, _ = train_classifier(x[:48], y[:48], x[48:], y[48:], cfg)
    c, _ = train_classifier(x[:48], y[:48], x[48:], y[48:], TrainConfig(arch="tiny", epochs=2, batch_size=16, seed=4))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_early_stopping_keeps_the_best_epoch():
    x, y, _ = blob_crops(64, 16, 8)
    rng = np.random.default_rng(0)
    y_val = rng.integers(0, 2, 16)  # unlearnable validation labels: val loss soon stops improving
    model, h = train_classifier(x[:48], y[:48], x[48:], y_val, TrainConfig(arch="tiny", epochs=30, batch_size=16,
                                                                           lr=1e-2, patience=2))
    assert len(h.train_loss) < 30
    assert h.best_epoch == int(np.argmin(h.val_loss))
    assert len(h.train_loss) == h.best_epoch + 1 + 2


def test_train_run_writes_a_checkpoint_with_the_contract(tmp_path, capsys):
    save_dataset(blob_dataset(96, 24, 20), tmp_path / "ds")
    s = train_run(tmp_path / "ds", tmp_path / "run", arch="tiny", epochs=2, batch_size=16, lr=1e-3, seed=0)
    model, arch, contract, history = load_checkpoint(tmp_path / "run" / "best.pt")
    assert arch == "tiny" and contract.task == "live_dead" and contract.classes == ("live", "dead")
    assert contract.positive_class == "dead" and (contract.height, contract.width) == (24, 24)
    assert contract.tiling.tile_size == 24 and contract.normalisation.method == "robust_zscore"
    assert contract.trained_on["dataset"]["fingerprint"] == json.loads((tmp_path / "ds" / "dataset.json").read_text())["fingerprint"]
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert not set(split["train_groups"]) & set(split["test_groups"])
    assert not set(split["val_groups"]) & set(split["test_groups"])
    assert len(history["train_loss"]) == s["epochs_run"] >= 1
    assert (tmp_path / "run" / "history.png").stat().st_size > 5000
    assert "epoch   1/2" in capsys.readouterr().err  # progress lines


def test_ogawa_checkpoint_round_trips_with_its_input_size(tmp_path):
    save_dataset(blob_dataset(80, 48, 10), tmp_path / "ds")
    train_run(tmp_path / "ds", tmp_path / "run", arch="ogawa", epochs=1, seed=0, progress=False)
    model, arch, contract, _ = load_checkpoint(tmp_path / "run" / "best.pt")
    assert arch == "ogawa" and contract.height == 48
    with torch.no_grad():
        assert model(torch.zeros(3, 1, 48, 48)).shape == (3, 2)


def test_cross_validation_by_group(tmp_path):
    save_dataset(blob_dataset(72, 16, 12), tmp_path / "ds")
    s = train_run(tmp_path / "ds", tmp_path / "run", arch="tiny", epochs=1, batch_size=16, lr=1e-3, folds=3,
                  progress=False)
    cv = s["cv"]
    assert cv["k"] == 3 and len(cv["folds"]) == 3
    tests = [set(f["test_groups"]) for f in cv["folds"]]
    assert not (tests[0] & tests[1]) and len(set().union(*tests)) == 12
    lines = (tmp_path / "run" / "cv_scores.csv").read_text().splitlines()
    assert lines[0] == "id,label,score,fold" and len(lines) == 73
    lo, hi = cv["pooled"]["auc_ci95"]
    assert lo <= cv["pooled"]["auc"] <= hi and "12 groups" in cv["pooled"]["bootstrap"]
    assert len(cv["pooled"]["balanced_accuracy_ci95"]) == 2
    assert (tmp_path / "run" / "best.pt").exists()


def test_final_model_on_every_group_after_cross_validation(tmp_path):
    from wellwatch.training.training_run import SplitError

    save_dataset(blob_dataset(48, 16, 6), tmp_path / "ds")
    s = train_run(tmp_path / "ds", tmp_path / "run", arch="cropnet8", epochs=1, batch_size=16, patience=0, folds=2,
                  fractions=(1.0, 0.0, 0.0), progress=False)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["train_groups"]) == 6 and split["val_groups"] == [] and split["test_groups"] == []
    _, _, contract, _ = load_checkpoint(tmp_path / "run" / "best.pt")
    assert set(contract.metrics) == {"cv"} and "auc_ci95" in contract.metrics["cv"]
    assert s["cv"]["k"] == 2
    assert s["cv"]["pooled_one_view"]["n"] == 48 and "auc_ci95" in s["cv"]["pooled_one_view"]  # 8 views vs one
    from wellwatch.training.evaluate import evaluate

    m = evaluate(tmp_path / "run", tmp_path / "ds", tmp_path / "report", n_boot=50, tsne_max=0, gradcam_n=0)
    assert "includes the training data" in m["patches"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Cross-validated at training" in report and "estimate how the model does on images it never saw" in report
    with pytest.raises(SplitError, match="split 1/0/0 leaves no validation groups.*give --patience 0"):
        train_run(tmp_path / "ds", tmp_path / "run2", arch="tiny", epochs=1, fractions=(1.0, 0.0, 0.0),
                  progress=False)
