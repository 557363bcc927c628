import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from spacenet7 import chip, train
from spacenet7.compose import compose
from spacenet7.config import ChipConfig
from spacenet7.errors import SN7Error
from spacenet7.models.task import SegmentationTask


@pytest.fixture(scope="module")
def chip_dir(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("train_chips")
    chip.run(ChipConfig(data_root=str(synth_root), out_dir=str(out), chip_size=128, overlap=0, progress=False, val_frac=0.34))
    return out


def _cfg(chip_dir, run_dir, *extra):
    return compose(
        "train",
        [
            "experiment=demo_cpu",
            f"chip_dir={chip_dir}",
            f"run_dir={run_dir}",
            "logger.wandb=false",
            "trainer.enable_progress_bar=false",
            "max_epochs=1",
            "batch_size=4",
            *extra,
        ],
    )


def _footprint_counts(ckpt, chip_dir) -> tuple[int, int, int]:
    """(tp, fp, fn) of the checkpoint's footprint channel (> 0.5) over the validation chips, ignored pixels left out."""
    from spacenet7.data.dataset import ChipDataset
    from spacenet7.io.artifacts import load_index
    from spacenet7.models.inference import load_model

    net = load_model(ckpt, device="cpu").net.eval()
    index, _ = load_index(chip_dir)
    tp = fp = fn = 0
    with torch.no_grad():
        for item in ChipDataset(chip_dir, index[index["split"] == "val"]):
            pred = net(item["image"][None])[0, 0].sigmoid() > 0.5
            truth, keep = item["target"][0] == 1, ~item["ignore"]
            tp += int((pred & truth & keep).sum())
            fp += int((pred & ~truth & keep).sum())
            fn += int((~pred & truth & keep).sum())
    return tp, fp, fn


def test_train_writes_checkpoints_config_and_metrics(chip_dir, tmp_path):
    # fp32 (not bf16 autocast where the CPU has it): the scores are recomputed below without autocast
    out = train.run(_cfg(chip_dir, tmp_path, "trainer.limit_train_batches=3", "logger.wandb=true", "trainer.precision=32-true"))
    assert list((tmp_path / "wandb").glob("offline-run-*")), "no offline wandb run"
    assert (tmp_path / "csv" / "version_0" / "metrics.csv").exists()
    assert out["best"].exists() and out["last"].exists()
    m = json.loads(out["metrics"].read_text())
    assert m["epochs"] == 1 and m["best_checkpoint"] == str(out["best"])
    # the scores are the best checkpoint's on the validation chips: footprint probability > 0.5,
    # pixels pooled over the chips, ignored pixels left out (recomputed here without Lightning)
    tp, fp, fn = _footprint_counts(out["best"], chip_dir)
    assert tp + fn > 0 and m["val_iou"] == pytest.approx(tp / (tp + fp + fn), rel=0.01, abs=1e-6)
    assert m["val_f1"] == pytest.approx(2 * m["val_iou"] / (1 + m["val_iou"]), abs=1e-4)  # F1 and IoU of the same counts
    assert (tmp_path / "config.yaml").exists()
    ckpt = torch.load(out["best"], weights_only=False)
    assert ckpt["hyper_parameters"]["model"]["_target_"] == "segmentation_models_pytorch.create_model"
    assert ckpt["hyper_parameters"]["chip_meta"]["upscale"] == 1.0


def test_same_seed_gives_the_same_run(chip_dir, tmp_path):
    extra = ("trainer.limit_train_batches=3", "trainer.limit_val_batches=2")
    a = json.loads(train.run(_cfg(chip_dir, tmp_path / "a", *extra))["metrics"].read_text())
    b = json.loads(train.run(_cfg(chip_dir, tmp_path / "b", *extra))["metrics"].read_text())
    c = json.loads(train.run(_cfg(chip_dir, tmp_path / "c", *extra, "seed=1"))["metrics"].read_text())
    assert a["val_loss"] == b["val_loss"] and a["val_iou"] == b["val_iou"]
    assert c["val_loss"] != a["val_loss"]


def test_unknown_encoder_is_a_clear_error(chip_dir, tmp_path):
    with pytest.raises(SN7Error, match="model.encoder_name='resnet999' is not a known"):
        train.run(_cfg(chip_dir, tmp_path, "model.encoder_name=resnet999"))


def test_missing_chip_index_is_a_clear_error(tmp_path):
    with pytest.raises(SN7Error, match="chip index not found"):
        train.run(_cfg(tmp_path / "nochips", tmp_path / "run"))


def test_nan_loss_is_a_clear_error(chip_dir, tmp_path):
    cfg = _cfg(chip_dir, tmp_path)
    task = SegmentationTask(cfg.model, cfg.loss, cfg.optimizer)
    batch = {"image": torch.full((2, 3, 64, 64), float("nan")), "target": torch.zeros(2, 3, 64, 64)}
    with pytest.raises(SN7Error, match="loss became nan"):
        task.training_step(batch, 0)


def test_loss_ignores_masked_pixels(chip_dir, tmp_path):
    cfg = _cfg(chip_dir, tmp_path)
    task = SegmentationTask(cfg.model, cfg.loss, cfg.optimizer)
    logits = torch.randn(2, 3, 32, 32)
    target = (torch.rand(2, 3, 32, 32) > 0.5).float()
    masked = target.clone()
    masked[:, :, :16] = -1
    other = masked.clone()
    garbage = logits.clone()
    garbage[:, :, :16] = 1e3 * torch.randn(2, 3, 16, 32)
    assert task.loss_fn(logits, masked).item() == pytest.approx(task.loss_fn(garbage, other).item(), rel=1e-4)


def test_resume_after_kill_reaches_the_same_final_epoch(chip_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "spacenet7",
        "train",
        "experiment=demo_cpu",
        f"chip_dir={chip_dir}",
        f"run_dir={run_dir}",
        "logger.wandb=false",
        "trainer.enable_progress_bar=false",
        "max_epochs=3",
        "batch_size=2",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 400
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert last.exists(), "no last.ckpt before the deadline"
    time.sleep(1.0)  # now inside epoch 2
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists(), "the run finished before it could be killed"
    killed_epoch = torch.load(last, weights_only=False)["epoch"]
    assert killed_epoch < 2
    r = subprocess.run(args + ["resume=true"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["epochs"] == 3
    assert torch.load(last, weights_only=False)["epoch"] == 2


def test_multirun_over_encoders_runs_two_jobs(chip_dir, tmp_path):
    args = [
        sys.executable,
        "-m",
        "spacenet7",
        "train",
        "-m",
        "model.encoder_name=resnet18,efficientnet-b0",
        "experiment=demo_cpu",
        f"chip_dir={chip_dir}",
        "logger.wandb=false",
        "trainer.enable_progress_bar=false",
        "max_epochs=1",
        "batch_size=2",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=2",
        f"hydra.sweep.dir={tmp_path}",
    ]
    r = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = sorted(tmp_path.glob("*/metrics.json"))
    assert len(metrics) == 2
    import yaml

    encoders = {yaml.safe_load((m.parent / "config.yaml").read_text())["model"]["encoder_name"] for m in metrics}
    assert encoders == {"resnet18", "efficientnet-b0"}


@pytest.mark.slow
def test_demo_cpu_learns(tmp_path_factory):
    """The demo experiment reaches validation footprint IoU >= 0.5 on the synthetic default."""
    from spacenet7 import synth
    from spacenet7.config import SynthConfig

    root = tmp_path_factory.mktemp("demo_data")
    synth.run(SynthConfig(out_dir=str(root)))
    from spacenet7.data.sn7 import scan

    aois = sorted(scan(root))[:-1]
    chips = root / "chips"
    chip.run(
        compose("chip", [f"data_root={root}", f"out_dir={chips}", f"aois=[{','.join(aois)}]", "overlap=0", "progress=false"])
    )
    cfg = compose(
        "train",
        [
            "experiment=demo_cpu",
            f"chip_dir={chips}",
            f"run_dir={root / 'run'}",
            "logger.wandb=false",
            "trainer.enable_progress_bar=false",
            "max_epochs=16",
        ],
    )  # the budget it was measured with
    m = json.loads(train.run(cfg)["metrics"].read_text())
    assert m["val_iou"] >= 0.5, m


@pytest.mark.parametrize("loss", ["bce_dice", "bce_jaccard", "focal_dice", "bce_dice_lovasz"])
def test_every_loss_config_trains_a_step(loss, tmp_path):
    """Each loss config: a training step reaches every layer, the loss ranks right answers below wrong
    ones on every target channel, and ignored pixels (-1) neither count nor get a gradient."""
    cfg = compose("train", [f"loss={loss}", "experiment=demo_cpu", f"run_dir={tmp_path}"])
    task = SegmentationTask(cfg.model, cfg.loss, cfg.optimizer)
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(2, 3, 64, 64, generator=g) > 0.7).float()
    target[:, :, :8] = -1
    loss_value = task.training_step({"image": torch.rand(2, 3, 64, 64, generator=g), "target": target}, 0)
    loss_value.backward()
    assert torch.isfinite(loss_value) and loss_value > 0
    grads = {n: p.grad for n, p in task.net.named_parameters() if p.requires_grad}
    assert all(v is not None and torch.isfinite(v).all() for v in grads.values())
    assert grads["segmentation_head.0.weight"].abs().sum() > 0
    assert any(v.abs().sum() > 0 for n, v in grads.items() if n.startswith("encoder."))  # back through the decoder

    fn = task.loss_fn
    sure = torch.where(target > 0, 8.0, -8.0)  # confident and right wherever a target is set
    right, wrong = fn(sure, target).item(), fn(-sure, target).item()
    assert 0 <= right < 0.1 * wrong, (right, wrong)
    for c in range(3):  # every channel is weighted in: getting one wrong costs
        one_wrong = sure.clone()
        one_wrong[:, c] = -sure[:, c]
        assert fn(one_wrong, target).item() > right + 0.05, c
    noisy = torch.randn(2, 3, 64, 64, generator=g, requires_grad=True)
    scrambled = noisy.detach().clone()
    scrambled[:, :, :8] = 100 * torch.randn(2, 3, 8, 64, generator=g)  # only the ignored rows change
    value = fn(noisy, target)
    assert fn(scrambled, target).item() == pytest.approx(value.item(), rel=1e-6)
    value.backward()
    assert (noisy.grad[:, :, :8] == 0).all() and noisy.grad[:, :, 8:].abs().sum() > 0


def test_a_term_applies_to_its_channels_only():
    import segmentation_models_pytorch as smp

    from spacenet7.models.losses import MultiTargetLoss

    dice = smp.losses.DiceLoss(mode="binary", from_logits=True)
    loss = MultiTargetLoss([dice], [1.0], [1.0, 0.5, 0.5], term_channels=[[0]])
    target = (torch.rand(2, 3, 32, 32) > 0.7).float()
    logits = torch.randn(2, 3, 32, 32)
    other = logits.clone()
    other[:, 1:] = torch.randn(2, 2, 32, 32)
    assert loss(logits, target).item() == pytest.approx(dice(logits[:, :1], target[:, :1]).item())
    assert loss(other, target).item() == pytest.approx(loss(logits, target).item())
    everywhere = MultiTargetLoss([dice], [1.0], [1.0, 0.5, 0.5])
    assert everywhere(other, target).item() != pytest.approx(everywhere(logits, target).item())
    with pytest.raises(ValueError, match="outside the 3 target channels"):
        MultiTargetLoss([dice], [1.0], [1.0, 0.5, 0.5], term_channels=[[3]])
    with pytest.raises(ValueError, match="1 loss terms but 2 term_channels"):
        MultiTargetLoss([dice], [1.0], [1.0, 0.5, 0.5], term_channels=[[0], None])


@pytest.mark.parametrize("encoder", ["resnet18", "tu-resnet18", "efficientnet-b0"])
def test_smp_and_timm_encoders_build_from_config(encoder, tmp_path):
    from spacenet7.models.task import build_net

    cfg = compose("train", [f"model.encoder_name={encoder}", f"run_dir={tmp_path}"])
    assert cfg.model["encoder_weights"] is None
    net = build_net(cfg.model)
    assert net(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_dataset_group_sets_the_data_root():
    assert compose("chip", ["dataset=real_sample"]).data_root.endswith("shared/data/sn7_real_sample")
    assert compose("chip", []).data_root == "data/synthetic"
    assert compose("chip", ["dataset=real_sample", "data_root=/x"]).data_root == "/x"


def test_drop_empty_chips_thins_only_empty_training_chips():
    import pandas as pd

    from spacenet7.errors import SN7Error
    from spacenet7.train import drop_empty_chips

    index = pd.DataFrame({"split": ["train"] * 80 + ["val"] * 20, "building_frac": [0.0] * 40 + [0.1] * 40 + [0.0] * 20})
    kept = drop_empty_chips(index, 0.25, seed=0)
    assert (kept["split"] == "val").sum() == 20
    assert ((kept["split"] == "train") & (kept["building_frac"] > 0)).sum() == 40
    assert ((kept["split"] == "train") & (kept["building_frac"] == 0)).sum() == 10
    assert drop_empty_chips(index, 0.25, seed=0).equals(kept)  # deterministic
    assert drop_empty_chips(index, 1.0, seed=0) is index
    with pytest.raises(SN7Error, match="empty_chips"):
        drop_empty_chips(index, -0.5, seed=0)


def test_init_from_loads_weights_but_not_the_optimizer_or_epoch(chip_dir, tmp_path):
    first = train.run(_cfg(chip_dir, tmp_path / "a", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"))
    src = torch.load(first["last"], map_location="cpu", weights_only=True)
    cfg = _cfg(chip_dir, tmp_path / "b", f"init_from={first['last']}", "seed=5")
    task = SegmentationTask(cfg.model, cfg.loss, cfg.optimizer)
    train.init_weights(task.net, cfg.init_from)
    for key, value in task.net.state_dict().items():
        assert torch.equal(value, src["state_dict"][f"net.{key}"]), key
    # a full run from it starts at epoch 0 and trains its own max_epochs, with a fresh optimizer
    out = train.run(
        _cfg(
            chip_dir, tmp_path / "c", f"init_from={first['last']}", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"
        )
    )
    ckpt = torch.load(out["last"], map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 2
    # a fresh AdamW has seen only this run's 2 steps, not the 4 of both runs
    steps = {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert steps == {2}


def test_init_from_another_architecture_is_one_clear_error(chip_dir, tmp_path):
    first = train.run(_cfg(chip_dir, tmp_path / "a", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"))
    cfg = _cfg(chip_dir, tmp_path / "b", "model=unet", f"init_from={first['last']}")
    with pytest.raises(SN7Error, match="architecture mismatch") as err:
        train.run(cfg)
    assert "\n" not in str(err.value) and str(first["last"]) in str(err.value)
    with pytest.raises(SN7Error, match="not found"):
        train.run(_cfg(chip_dir, tmp_path / "c", f"init_from={tmp_path / 'nope.ckpt'}"))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if unpickled


def test_init_from_never_runs_code_in_a_checkpoint(chip_dir, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(str(marker))}, evil)
    cfg = _cfg(chip_dir, tmp_path / "run", f"init_from={evil}")
    with pytest.raises(SN7Error, match="not a loadable checkpoint"):
        train.run(cfg)
    assert not marker.exists()


def test_crop_draws_random_windows_of_each_training_chip_and_leaves_validation_whole(chip_dir):
    from spacenet7.data.dataset import ChipDataModule
    from spacenet7.io.artifacts import load_index

    index, _ = load_index(chip_dir)
    dm = ChipDataModule(chip_dir, index, batch_size=2, crop=96)
    train_ds = dm.train_dataloader().dataset
    whole = dm.val_dataloader().dataset[0]
    assert whole["image"].shape[-2:] == (128, 128)
    torch.manual_seed(0)
    items = [train_ds[0] for _ in range(12)]
    assert all(it["image"].shape == (3, 96, 96) and it["target"].shape == (3, 96, 96) for it in items)
    full = train_ds._read(0)  # the same chip, uncropped: every crop is one of its windows
    img = torch.from_numpy(full[:3]).float() / 255
    offsets = set()
    for it in items:
        hits = [(r, c) for r in range(33) for c in range(33) if torch.equal(img[:, r : r + 96, c : c + 96], it["image"])]
        assert hits, "a crop that is not a window of its chip"
        offsets.add(hits[0])
    assert len(offsets) > 3  # random positions, not one fixed window
    small = ChipDataModule(chip_dir, index, batch_size=2, crop=256).train_dataloader().dataset[0]
    assert small["image"].shape[-2:] == (128, 128)  # chips no larger than the crop are used whole


def test_ema_checkpoints_hold_the_average_of_the_step_weights(chip_dir, tmp_path):
    """ema_decay: the checkpoint's weights are decay-weighted averages of the weights after each
    step (not the last step's), and ``current_model_state`` keeps the raw ones for resume."""
    extra = ("trainer.limit_train_batches=3", "trainer.limit_val_batches=1")
    plain = torch.load(train.run(_cfg(chip_dir, tmp_path / "plain", *extra))["last"], map_location="cpu", weights_only=True)
    ema = torch.load(
        train.run(_cfg(chip_dir, tmp_path / "ema", *extra, "ema_decay=0.5"))["last"], map_location="cpu", weights_only=True
    )
    raw = ema["current_model_state"]
    key = next(k for k, v in raw.items() if k.startswith("net.") and v.is_floating_point() and v.ndim == 4)
    # same seed, so the raw weights are those of the run without EMA; the averaged ones differ
    assert torch.equal(raw[key], plain["state_dict"][key])
    assert not torch.allclose(ema["state_dict"][key], raw[key])
    # the average lies between the start and the last step: closer to the last step than the start is
    torch.manual_seed(0)  # train.run seeds 0 before it builds the network: the same initial weights
    start = SegmentationTask(**{k: ema["hyper_parameters"][k] for k in ("model", "loss", "optimizer")})
    first = start.state_dict()[key]
    assert (ema["state_dict"][key] - raw[key]).norm() < (first - raw[key]).norm()
    with pytest.raises(SN7Error, match="ema_decay=1.5 must be within"):
        _cfg(chip_dir, tmp_path / "bad", "ema_decay=1.5")


def test_validation_frequency_leaves_the_weights_unchanged(synth_root, tmp_path):
    # recipe=real validates rarely to save time: validating must not move the random windows or the weights
    chips = tmp_path / "chips"
    chip.run(ChipConfig(data_root=str(synth_root), out_dir=str(chips), layout="rasters", progress=False, val_frac=0.34))
    weights = []
    for every in (1, 2):
        cfg = compose(
            "train",
            [
                "experiment=real_sample",
                f"chip_dir={chips}",
                f"run_dir={tmp_path / str(every)}",
                "logger.wandb=false",
                "trainer.enable_progress_bar=false",
                "max_epochs=2",
                "trainer.limit_train_batches=2",
                "trainer.limit_val_batches=1",
                f"trainer.check_val_every_n_epoch={every}",
            ],
        )
        train.run(cfg)
        ckpt = torch.load(tmp_path / str(every) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        weights.append(ckpt["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
