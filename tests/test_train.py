"""The train stage on tiny data: learning, resume after a kill, MLflow records, failures."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from resnetlab.cli import main
from resnetlab.core.errors import ConfigError
from resnetlab.core.params import parse_params
from resnetlab.pipeline import train as train_stage
from resnetlab.train import checkpoint

# `device: cpu`, not `auto`: the numbers and tags these tests expect are the CPU's, also on a
# machine with a GPU. A checkpoint after every epoch: the resume tests interrupt between them.
TINY_TRAIN = {
    "device": "cpu",
    "checkpoint_every_s": 0,
    "epochs": 3,
    "batch_size": 64,
    "lr": 0.05,
    "precision": "fp32",
    "eval_batch_size": 500,
    "milestones": [0.67],
}


def make_params(variant_overrides: dict | None = None, **train) -> dict:
    return {
        "mlflow": {"experiment": "train-test"},
        "train": {**TINY_TRAIN, **train},
        "variants": {
            "tiny": {"model": {"name": "resnet_v1", "depth": 8}, **(variant_overrides or {})}
        },
    }


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A project-like folder: MLflow's SQLite store and artifacts land inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def train(params: dict, data: Path, root: Path, name: str = "tiny") -> dict:
    variant = parse_params(params).variant(name)
    return train_stage.train_variant(
        variant,
        params["mlflow"]["experiment"],
        data,
        root / "models" / name,
        root / "metrics" / name,
    ).to_dict()


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def client():
    from mlflow.tracking import MlflowClient

    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def runs(experiment: str = "train-test"):
    """The training runs (not their parent run, see tracking.Lineage)."""
    exp = client().get_experiment_by_name(experiment)
    found = client().search_runs([exp.experiment_id], "tags.stage = 'train'") if exp else []
    return list(found)


def test_trains_records_and_writes_outputs(tiny_prepared, workdir):
    summary = train(make_params(epochs=4), tiny_prepared, workdir)

    history = np.genfromtxt(workdir / "metrics/tiny/history.csv", delimiter=",", names=True)
    assert list(history["epoch"]) == [1, 2, 3, 4]
    assert history["train_loss"][-1] < 0.8 * history["train_loss"][0]  # it learns
    saved = json.loads((workdir / "metrics/tiny/train.json").read_text())
    assert saved == summary
    assert saved["epochs"] == 4 and saved["best_val_accuracy"] == history["val_accuracy"].max()
    card = json.loads((workdir / "metrics/tiny/model.json").read_text())
    assert card["variant"] == "tiny" and card["model"] == "resnet_v1"
    assert card["parameters"] == 75290 and card["depth"] == 8
    assert card["best_epoch"] == int(history["epoch"][history["val_accuracy"].argmax()])

    # The model file: best weights + resolved config, loadable without unpickling code.
    record = torch.load(workdir / "models/tiny/model.pt", weights_only=True)
    assert record["config"]["model"] == {"name": "resnet_v1", "depth": 8}
    assert record["config"]["train"]["epochs"] == 4
    assert record["best_epoch"] == card["best_epoch"]
    assert len(record["classes"]) == 10
    assert not list((workdir / "models/tiny").glob(".*.tmp"))  # no half-written files

    # MLflow: one finished run named after the variant, with params, per-epoch metrics, tags,
    # the model and the history table.
    (run,) = runs()
    run_id = json.loads((workdir / "models/tiny/mlflow_run.json").read_text())["run_id"]
    assert run.info.run_id == run_id and run.info.run_name == "tiny · seed 0"
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["train.lr"] == "0.05" and p["model.depth"] == "8" and p["model.name"] == "resnet_v1"
    assert p["train.augment.crop_padding"] == "4" and p["parameters"] == "75290"
    # What `precision` (fp32 here) and `compile: auto` resolved to: 4 epochs are too short to
    # repay a compilation, and CUDA graphs are CUDA's.
    assert p["resolved.precision"] == "fp32" and p["resolved.compile"] == "False"
    assert p["resolved.cuda_graphs"] == "False"
    val = client().get_metric_history(run_id, "val_accuracy")
    assert [m.step for m in val] == [1, 2, 3, 4]
    assert [m.value for m in val] == pytest.approx(list(history["val_accuracy"]), abs=1e-6)
    for key in ("train_loss", "val_loss", "train_accuracy", "lr", "epoch_time_s", "images_per_s"):
        assert len(client().get_metric_history(run_id, key)) == 4
    tags = run.data.tags
    assert tags["variant"] == "tiny" and tags["device"] == "cpu"
    assert tags["torch_version"] == torch.__version__
    artifacts = {a.path for a in client().list_artifacts(run_id)}
    assert {"history.json", "train.json", "model.json", "history.csv"} <= artifacts
    assert not (workdir / "metrics/tiny/curves.png").exists()  # figures are the compare stage's

    # The model: a logged model named after the variant, the run's output, registered.
    (output,) = client().get_run(run_id).outputs.model_outputs
    logged = client().get_logged_model(output.model_id)
    assert logged.name == "tiny" and logged.source_run_id == run_id
    (version,) = client().search_model_versions("name = 'resnetlab-tiny'")
    assert version.source == f"models:/{output.model_id}" and version.run_id == run_id

    import mlflow.artifacts
    import mlflow.pyfunc
    import mlflow.pytorch

    # Downloaded with an explicit tracking URI: MLflow's global one may point anywhere.
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"runs:/{run_id}/tiny", tracking_uri=os.environ["MLFLOW_TRACKING_URI"]
    )
    # pyfunc: class names and probabilities, the output schema naming the classes.
    model = mlflow.pyfunc.load_model(local)
    classes = record["classes"]
    assert model.metadata.get_output_schema().input_names() == ["class", "probability", *classes]
    images = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    out = model.predict(images)
    assert list(out.columns) == ["class", "probability", *classes] and len(out) == 2
    assert set(out["class"]) <= set(classes)
    assert out[classes].sum(axis=1).to_numpy() == pytest.approx([1.0, 1.0], abs=1e-5)
    # mlflow.pytorch: the network itself, logits out.
    net = mlflow.pytorch.load_model(local)
    logits = net(torch.from_numpy(images)).detach()
    assert logits.shape == (2, 10)
    expected = torch.softmax(logits, 1).max(1).values.numpy()
    assert out["probability"].to_numpy() == pytest.approx(expected, abs=1e-5)


def test_resume_after_interruption_gives_identical_weights(tiny_prepared, workdir, monkeypatch):
    # EMA state must survive the resume too; alternating flips continue from (seed, epoch).
    params = make_params(ema_decay=0.9, augment={"flip": "alternate"})
    train(params, tiny_prepared, workdir / "straight")

    # Interrupt the second run right after its epoch-2 checkpoint is on disk.
    real_save = checkpoint.save_atomic
    saves = []

    def interrupt_after_epoch_2(obj, path):
        real_save(obj, path)
        if Path(path).name == "checkpoint.pt":
            saves.append(obj["progress"]["epoch"])
            if obj["progress"]["epoch"] == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_atomic", interrupt_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(params, tiny_prepared, workdir / "resumed")
    monkeypatch.setattr(checkpoint, "save_atomic", real_save)
    assert saves == [1, 2]
    assert not (workdir / "resumed/models/tiny/model.pt").exists()
    interrupted = [r for r in runs() if r.info.status == "KILLED"]
    assert len(interrupted) == 1

    train(params, tiny_prepared, workdir / "resumed")
    a = weights(workdir / "straight/models/tiny/model.pt")
    b = weights(workdir / "resumed/models/tiny/model.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    hist_a = (workdir / "straight/metrics/tiny/history.csv").read_text().splitlines()
    hist_b = (workdir / "resumed/metrics/tiny/history.csv").read_text().splitlines()
    strip = [lambda row: row.split(",")[:6]]  # timings differ, the numbers do not
    assert [strip[0](r) for r in hist_a] == [strip[0](r) for r in hist_b]

    # One MLflow run for the resumed stage execution, continued, not a second one.
    all_runs = runs()
    assert len(all_runs) == 2
    resumed_id = json.loads((workdir / "resumed/models/tiny/mlflow_run.json").read_text())
    (resumed,) = [r for r in all_runs if r.info.run_id == resumed_id["run_id"]]
    assert resumed.info.status == "FINISHED"
    steps = [m.step for m in client().get_metric_history(resumed.info.run_id, "val_accuracy")]
    assert steps == [1, 2, 3]


def test_checkpoints_between_epochs_resume_without_recording_an_epoch_twice(
    tiny_prepared, workdir, monkeypatch
):
    """`checkpoint_every_s` leaves epochs off disk: MLflow records an epoch once the checkpoint
    holds it, so the epochs an interruption makes a run train again are recorded once."""
    from resnetlab.train import loop

    params = make_params(epochs=4, checkpoint_every_s=3600)
    train(params, tiny_prepared, workdir / "straight")

    # Checkpoints after epochs 2 and 4 (as a clock would make them), a kill during epoch 4.
    monkeypatch.setattr(checkpoint.Cadence, "due", lambda self, epoch, epochs: epoch in (2, 4))
    real_epoch = loop.train_epoch
    epochs_started: list[int] = []

    def killed_in_epoch_4(*args, **kwargs):
        epochs_started.append(len(epochs_started) + 1)
        if len(epochs_started) == 4:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(loop, "train_epoch", killed_in_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        train(params, tiny_prepared, workdir / "resumed")
    monkeypatch.setattr(loop, "train_epoch", real_epoch)
    ckpt = workdir / "resumed/models/tiny/checkpoint.pt"
    assert checkpoint.load(ckpt)["progress"]["epoch"] == 2  # epoch 3 trained, not on disk
    (killed,) = [r for r in runs() if r.info.status == "KILLED"]
    steps = [m.step for m in client().get_metric_history(killed.info.run_id, "val_accuracy")]
    assert steps == [1, 2]

    train(params, tiny_prepared, workdir / "resumed")  # resumes after epoch 2
    a = weights(workdir / "straight/models/tiny/model.pt")
    b = weights(workdir / "resumed/models/tiny/model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [m.step for m in client().get_metric_history(killed.info.run_id, "val_accuracy")]
    assert steps == [1, 2, 3, 4]  # epochs 3 and 4 once each, though epoch 3 ran twice


def test_the_checkpoint_cadence_is_time_since_the_last_write_and_the_last_epoch():
    now = [100.0]
    cadence = checkpoint.Cadence(60, clock=lambda: now[0])
    due = []
    for epoch, seconds in enumerate([25, 25, 25, 25, 70, 5, 5], start=1):
        now[0] += seconds
        if cadence.due(epoch, 7):
            cadence.written()
            due.append(epoch)
    assert due == [3, 5, 7]  # 75 s after the start, 95 s after epoch 3, and the last
    every = checkpoint.Cadence(0, clock=lambda: 0.0)
    assert all(every.due(epoch, 9) for epoch in range(1, 10))


def test_a_checkpoint_resumes_on_the_kind_of_device_that_wrote_it(tiny_prepared):
    """CUDA epochs drop their last partial batch, CPU ones keep it: a checkpoint's schedule
    counts the steps of one, so the other does not resume it. CPU fingerprints are those of
    before, so CPU checkpoints written then still resume."""
    from resnetlab.train.trainer import data_fingerprint, run_fingerprint

    variant = parse_params(make_params()).variant("tiny")
    cpu = run_fingerprint(variant, tiny_prepared, drop_last=False)
    assert cpu == f"{variant.fingerprint()}-{data_fingerprint(tiny_prepared)}"
    assert run_fingerprint(variant, tiny_prepared, drop_last=True) != cpu


def test_the_checkpoint_cadence_does_not_stop_a_run_resuming():
    def fingerprint(**train) -> str:
        return parse_params(make_params(**train)).variant("tiny").fingerprint()

    assert fingerprint(checkpoint_every_s=0) == fingerprint(checkpoint_every_s=600)
    assert fingerprint(lr=0.05) != fingerprint(lr=0.01)


def test_finished_or_foreign_checkpoint_is_not_resumed(tiny_prepared, workdir):
    train(make_params(epochs=1), tiny_prepared, workdir)
    first = weights(workdir / "models/tiny/model.pt")
    # Same config again (dvc repro -f): trains from scratch, same seed, same result.
    train(make_params(epochs=1), tiny_prepared, workdir)
    again = weights(workdir / "models/tiny/model.pt")
    assert all(torch.equal(first[k], again[k]) for k in first)
    # Another learning rate: the old checkpoint is not reused.
    train(make_params(epochs=1, lr=0.01), tiny_prepared, workdir)
    other = weights(workdir / "models/tiny/model.pt")
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(
    tiny_prepared, workdir, monkeypatch, capsys
):
    # A good run interrupted after epoch 1 leaves its checkpoint ...
    real_save = checkpoint.save_atomic

    def stop(obj, path):
        real_save(obj, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_atomic", stop)
    with pytest.raises(KeyboardInterrupt):
        train(make_params(), tiny_prepared, workdir)
    monkeypatch.setattr(checkpoint, "save_atomic", real_save)
    ckpt = workdir / "models/tiny/checkpoint.pt"
    good = ckpt.read_bytes()

    # ... then an absurd learning rate blows the loss up: one message, exit 1, nothing written.
    params = workdir / "params.yaml"
    params.write_text(yaml.safe_dump(make_params(lr=1e30)))
    argv = ["train", "--params", str(params), "--variant", "tiny", "--data", str(tiny_prepared)]
    argv += ["--out", "models/tiny", "--metrics", "metrics/tiny"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "tiny: the loss became" in err and "at epoch 1, step" in err
    assert "No checkpoint was written. Lower the learning rate (lr=1e+30)" in err
    assert "Traceback" not in err
    assert ckpt.read_bytes() == good
    assert not (workdir / "models/tiny/model.pt").exists()
    failed = [r for r in runs() if r.info.status == "FAILED"]
    assert len(failed) == 1


@pytest.mark.parametrize(
    ("channel_stats", "problem"),
    [
        ({"std": [0.25, 0.0, 0.25]}, "'std' is [0.25, 0.0, 0.25], expected 3 numbers > 0"),
        ({"mean": [0.5, float("nan"), 0.5]}, "'mean' is [0.5, nan, 0.5], expected 3 finite"),
    ],
    ids=["zero-std", "nan-mean"],
)
def test_non_finite_or_zero_channel_stats_are_refused_before_training(
    tiny_prepared, workdir, tmp_path, capsys, channel_stats, problem
):
    """Was: "Lower the learning rate (lr=0.05) or add a warm-up" for data no rate can train;
    now `load_prepared` refuses such a meta.json before a model is built or an epoch run."""
    data = tmp_path / "prepared"
    shutil.copytree(tiny_prepared, data)
    meta = json.loads((data / "meta.json").read_text())
    meta.update({"mean": [0.5] * 3, "std": [0.25] * 3, **channel_stats})
    (data / "meta.json").write_text(json.dumps(meta))  # NaN as JSON's NaN, which Python reads
    params = workdir / "params.yaml"
    params.write_text(yaml.safe_dump(make_params()))
    argv = ["train", "--params", str(params), "--variant", "tiny", "--data", str(data)]
    assert main([*argv, "--out", "models/tiny", "--metrics", "metrics/tiny"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"resnetlab train: error: {data / 'meta.json'}: ")
    assert problem in err[0] and err[0].endswith("; re-run `dvc repro -f prepare`")
    assert not list(workdir.glob("models/tiny/*.pt"))  # no checkpoint, no model


@pytest.mark.parametrize(
    ("variant", "train_overrides", "message"),
    [
        ({"epocs": 3}, {}, "variants.tiny.epocs: unknown key"),
        ({}, {"lr": "fast"}, "train.lr: 'fast' is not allowed; expected a number"),
        ({"batch_size": 0}, {}, "variants.tiny.batch_size: 0 is not allowed"),
        ({}, {"optimizer": "rmsprop"}, "expected sgd, adamw"),
        ({"augment": {"cutout_size": 600}}, {}, "variants.tiny.augment.cutout_size: 600"),
        ({"model": {"name": "resnet_v1", "depth": 9}}, {}, "resnet_v1.depth: 9 is not allowed"),
        ({"model": {"name": "resnet_v9"}}, {}, "resnet_v9"),
    ],
)
def test_invalid_params_stop_before_any_work(
    tiny_prepared, workdir, capsys, variant, train_overrides, message
):
    params = make_params(**train_overrides)
    params["variants"]["tiny"].update(variant)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    argv = ["train", "--variant", "tiny", "--data", str(tiny_prepared)]
    argv += ["--out", "models/tiny", "--metrics", "metrics/tiny"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (workdir / "models").exists() and not (workdir / "metrics").exists()
    assert not (workdir / "mlflow.db").exists()


def test_unknown_variant_lists_the_declared_ones(workdir, capsys):
    (workdir / "params.yaml").write_text(yaml.safe_dump(make_params()))
    argv = ["train", "--variant", "nope", "--data", "d", "--out", "o", "--metrics", "m"]
    assert main(argv) == 1
    assert "variants.nope: no such variant; declared: tiny" in capsys.readouterr().err


def test_unreachable_tracking_server_fails_at_start(tiny_prepared, workdir, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    (workdir / "params.yaml").write_text(yaml.safe_dump(make_params()))
    argv = ["train", "--variant", "tiny", "--data", str(tiny_prepared)]
    argv += ["--out", "models/tiny", "--metrics", "metrics/tiny"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "MLflow tracking store http://127.0.0.1:9 is not usable" in err
    assert not (workdir / "models/tiny/checkpoint.pt").exists()


def _torchrun_two_nodes(data: Path) -> list[list[str]]:
    """docs/many-machines.md's torchrun command, as its two nodes run it: rendezvous on a free
    port of 127.0.0.1, the tiny variant on `data`, the outputs under ddp/."""
    from tracking_server import free_port

    page = (Path(__file__).parents[1] / "docs/many-machines.md").read_text()
    section = page.split("\n## One run across nodes: torchrun\n", 1)[1]
    line = section.split("```sh\n", 1)[1].split("\n", 1)[0]
    line = line.replace("29400", str(free_port())).replace("resnet56", "tiny")
    line = line.replace("data/prepared", str(data)).replace("models/tiny/seed0", "ddp/models/tiny")
    argv = shlex.split(line.replace("metrics/tiny/seed0", "ddp/metrics/tiny"))
    argv[0] = str(Path(sys.executable).parent / "torchrun")
    return [argv, argv]  # every node runs the same command


def _torchrun_one_node(data: Path) -> list[list[str]]:
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "resnetlab", "train", "--variant", "tiny", "--data", str(data)]
    return [[*cmd, "--out", "ddp/models/tiny", "--metrics", "ddp/metrics/tiny"]]


@pytest.mark.slow
@pytest.mark.parametrize("launch", [_torchrun_one_node, _torchrun_two_nodes], ids=["1x2", "2x1"])
def test_ddp_with_two_cpu_processes_matches_the_global_batch(tiny_prepared, workdir, launch):
    """torchrun, 2 processes, gloo: gradients are averaged over the global batch; on one node
    (`--standalone`), and on two nodes joined by c10d's rendezvous on 127.0.0.1.

    On the CPU each process normalises BatchNorm over its own half (PyTorch's SyncBatchNorm is
    GPU-only), so DDP cannot be bit-identical to one process; it must be far closer to the
    single-process run of the same global batch than to a run that saw only one half.
    """
    base = make_params(epochs=2, lr=0.02, augment={"crop_padding": 0, "flip": False})
    half = make_params(epochs=2, lr=0.02, batch_size=32, augment={"crop_padding": 0, "flip": False})
    train(base, tiny_prepared, workdir / "single")
    train(half, tiny_prepared, workdir / "half")

    (workdir / "params.yaml").write_text(yaml.safe_dump(base))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(cmd, cwd=workdir, env=env, stderr=subprocess.PIPE, text=True)
        for cmd in launch(tiny_prepared)
    ]
    for node in nodes:
        _, err = node.communicate(timeout=300)
        assert node.returncode == 0, err[-3000:]

    def final(root: str) -> torch.Tensor:
        # The last epoch's weights (the checkpoint), not the best-on-val pick, which may differ.
        saved = torch.load(workdir / root / "models/tiny/checkpoint.pt", weights_only=True)
        return flat(saved["model"])

    from resnetlab.models import build_model

    torch.manual_seed(0)
    start = flat(build_model("resnet_v1", depth=8, num_classes=10).state_dict())
    single, ddp, one_half = final("single"), final("ddp"), final("half")
    moved = (single - start).norm()
    # Measured here: moved 0.42, DDP to single 0.067, half-batch run to single 0.67, the same
    # on one node and on two.
    assert (ddp - single).norm() < 0.3 * moved
    assert (ddp - single).norm() < 0.25 * (one_half - single).norm()
    summary = json.loads((workdir / "ddp/metrics/tiny/train.json").read_text())
    assert summary["epochs"] == 2
    # Only rank 0 talked to MLflow: one run for the DDP execution.
    ddp_runs = [r for r in runs() if r.data.tags.get("num_processes") == "2"]
    assert len(ddp_runs) == 1 and ddp_runs[0].info.status == "FINISHED"


def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Trainable weights as one vector (BatchNorm running statistics left out)."""
    return torch.cat(
        [v.flatten().float() for k, v in state.items() if "running" not in k and "batches" not in k]
    )


@pytest.mark.slow
def test_kill_9_mid_training_then_rerun_resumes_to_the_same_weights(tiny_prepared, workdir):
    """A real SIGKILL of `resnetlab train` (no cleanup runs), then the same command again."""
    import signal
    import time

    params = make_params(epochs=12, batch_size=125)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "resnetlab", "train", "--variant", "tiny"]
    cmd += ["--data", str(tiny_prepared), "--out", "models/tiny", "--metrics", "metrics/tiny"]
    ckpt = workdir / "models/tiny/checkpoint.pt"
    proc = subprocess.Popen(cmd, cwd=workdir, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(0.3)  # land somewhere inside a later epoch, perhaps mid-write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = checkpoint.load(ckpt)  # whatever moment the kill hit, the file is whole
    assert not saved["finished"] and 1 <= saved["progress"]["epoch"] < 12
    assert not (workdir / "models/tiny/model.pt").exists()

    rerun = ["train", "--variant", "tiny", "--data", str(tiny_prepared)]
    assert main([*rerun, "--out", "models/tiny", "--metrics", "metrics/tiny"]) == 0
    assert not list((workdir / "models/tiny").glob(".*.tmp"))
    train(params, tiny_prepared, workdir / "straight")
    a = weights(workdir / "straight/models/tiny/model.pt")
    b = weights(workdir / "models/tiny/model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cuda_runs_drop_the_last_partial_batch_and_cpu_runs_keep_it():
    """On CUDA every step has the same shape (a last batch of 72 of 45,000 images would
    recompile a compiled model); the CPU keeps it, and with it every recorded CPU result. The
    full batches are the same either way."""
    from resnetlab.train import loop

    def sizes(drop_last: bool) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(0)
        return list(loop.batches(300, 128, generator, torch.device("cpu"), 1, drop_last))

    kept, dropped = sizes(False), sizes(True)
    assert [len(b) for b in kept] == [128, 128, 44] and loop.steps_per_epoch(300, 128, 1) == 3
    assert [len(b) for b in dropped] == [128, 128]
    assert loop.steps_per_epoch(300, 128, 1, drop_last=True) == 2
    assert all(torch.equal(a, b) for a, b in zip(kept, dropped, strict=False))


def test_an_epoch_augmented_before_its_first_step_trains_the_same_batches():
    """CUDA's loop (`augment_once`, run here on the CPU): the same batches in the same order as
    augmenting per step, so with nothing random in the augmentation the same weights; with
    crops and flips, other views of the same images."""
    import copy

    from resnetlab.core.config import AugmentConfig, TrainConfig
    from resnetlab.data.normalize import Normalizer
    from resnetlab.models import build_model
    from resnetlab.train import loop, schedule

    torch.manual_seed(0)
    images = torch.randint(0, 256, (300, 32, 32, 3), dtype=torch.uint8)
    labels = torch.randint(0, 10, (300,))
    normalize = Normalizer((0.5,) * 3, (0.25,) * 3, torch.device("cpu"), True)
    start = build_model("resnet_v1", depth=8, num_classes=10)
    start = start.to(memory_format=torch.channels_last)

    def epoch(augment: AugmentConfig, once: bool) -> tuple[dict, float]:
        cfg = TrainConfig(epochs=1, batch_size=64, lr=0.05, augment=augment)
        model = copy.deepcopy(start)
        opt = schedule.build_optimizer(model, cfg)
        sched = schedule.build_scheduler(opt, cfg, loop.steps_per_epoch(300, 64, 1))
        gen = torch.Generator().manual_seed(3)
        stats = loop.train_epoch(
            model, opt, sched, images, labels, cfg, normalize, gen, augment_once=once
        )
        return model.state_dict(), stats.loss

    off = AugmentConfig(crop_padding=0, flip=False)
    (a, loss_a), (b, loss_b) = epoch(off, False), epoch(off, True)
    assert loss_a == loss_b and all(torch.equal(a[k], b[k]) for k in a)
    (c, _), (d, loss_d) = epoch(AugmentConfig(), False), epoch(AugmentConfig(), True)
    assert math.isfinite(loss_d) and not all(torch.equal(c[k], d[k]) for k in c)


def test_cuda_graphs_only_for_a_compiled_model_on_cuda_and_auto_not_under_ddp():
    from resnetlab.core.device import use_cuda_graphs

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert use_cuda_graphs("auto", cuda, compiled=True, distributed=False)
    assert not use_cuda_graphs("auto", cuda, compiled=True, distributed=True)
    assert use_cuda_graphs(True, cuda, compiled=True, distributed=True)  # asked for: done
    assert not use_cuda_graphs(False, cuda, compiled=True, distributed=False)
    for setting in ("auto", True):
        assert not use_cuda_graphs(setting, cuda, compiled=False, distributed=False)
        assert not use_cuda_graphs(setting, cpu, compiled=True, distributed=False)


def test_the_head_has_one_output_per_class_of_the_prepared_data(tiny_prepared, workdir):
    """The number of classes comes from the prepared data's meta.json, not from CIFAR-10: a
    3-class folder trains a 3-way head, and the model file, evaluate and predict's scores follow
    it. A variant that names another count is refused in one line."""
    from resnetlab.data.prepared import Prepared, load_prepared, save_prepared
    from resnetlab.evaluate.classifier import load_classifier
    from resnetlab.pipeline.evaluate import evaluate_variant

    ten = load_prepared(tiny_prepared)
    three = workdir / "three"
    classes = ("cat", "dog", "ship")
    labels = {split: y % 3 for split, y in ten.labels.items()}
    save_prepared(Prepared(ten.images, labels, classes, ten.mean, ten.std), three)
    meta = json.loads((three / "meta.json").read_text())
    assert meta["classes"] == list(classes) and len(meta["class_counts"]["train"]) == 3

    train(make_params(epochs=1), three, workdir)
    model_dir = workdir / "models/tiny"
    classifier, record = load_classifier(model_dir / "model.pt")
    assert record.classes == classes
    assert classifier(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    report = evaluate_variant("tiny", three, model_dir, workdir / "metrics/tiny/eval")
    assert 0 <= report.accuracy <= 1
    per_class = (workdir / "metrics/tiny/eval/per_class.csv").read_text()
    assert all(name in per_class for name in classes) and "airplane" not in per_class

    with pytest.raises(ConfigError, match=r"^resnet_v1.num_classes: 10 is not allowed; the da"):
        train(
            make_params({"model": {"name": "resnet_v1", "depth": 8, "num_classes": 10}}),
            three,
            workdir,
        )
