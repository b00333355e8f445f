"""Parallel runs lease their devices; queued experiments record into the project's MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnetlab.core import device as dev
from resnetlab.core.errors import ResnetlabError
from resnetlab.tracking import store

# A child process that places itself as a parallel run would and prints where it landed.
PLACE = (
    "import json, torch; from resnetlab.core import device as d; d.LOCK_DIR = __import__('pathlib')"
    ".Path({lock_dir!r}); p = d.place('auto'); print(json.dumps([p.describe(), "
    "torch.get_num_threads()]), flush=True); input()"
)


def place_in_child(lock_dir: Path, workers: str) -> subprocess.Popen:
    env = {**os.environ, dev.CPU_WORKERS_ENV: workers}
    code = PLACE.format(lock_dir=str(lock_dir))
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_cpu_workers_lease_disjoint_cores_and_release_them_on_exit(tmp_path):
    first = place_in_child(tmp_path, "2")
    where_first, threads = json.loads(first.stdout.readline())
    second = place_in_child(tmp_path, "2")
    where_second, _ = json.loads(second.stdout.readline())
    assert where_first.startswith("cpu (core") and where_second.startswith("cpu (core")
    assert where_first != where_second
    assert threads == len(os.sched_getaffinity(0)) // 2
    first.communicate("\n")  # the first run ends: its lease is free again
    third = place_in_child(tmp_path, "2")
    assert json.loads(third.stdout.readline())[0] == where_first
    second.communicate("\n")
    third.communicate("\n")


def test_lease_takes_the_first_free_slot(tmp_path, monkeypatch):
    monkeypatch.setattr(dev, "LOCK_DIR", tmp_path)
    i, held = dev._lease(["a", "b"])
    try:
        assert i == 0
        # flock locks belong to the open file: a second open in this process is refused too.
        j, other = dev._lease(["a", "b"])
        assert j == 1
        other.close()
    finally:
        held.close()
    k, again = dev._lease(["a", "b"])
    assert k == 0
    again.close()


def test_gpus_are_leased_by_their_uuid_whatever_index_a_worker_sees(tmp_path, monkeypatch):
    """Worker 1 sees GPUs aaa, bbb and leases aaa (index 0). Worker 2, started with
    CUDA_VISIBLE_DEVICES=1,0, sees bbb, aaa: it leases bbb, its index 0 (was: lock `cuda-0` taken,
    so it took `cuda-1`, which is aaa again, booked twice). Each makes its GPU current. One
    visible GPU is leased too (was: not at all). Simulated: no GPU here."""
    from types import SimpleNamespace

    monkeypatch.setattr(dev, "LOCK_DIR", tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    current: list[int] = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)

    def visible(*uuids: str) -> None:
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(uuids))
        properties = lambda i: SimpleNamespace(uuid=uuids[i])  # noqa: E731
        monkeypatch.setattr(torch.cuda, "get_device_properties", properties)

    visible("GPU-aaa", "GPU-bbb")
    first = dev.place("auto")
    visible("GPU-bbb", "GPU-aaa")
    second = dev.place("auto")
    assert (first.device, second.device) == (torch.device("cuda", 0), torch.device("cuda", 0))
    assert current == [0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cuda-GPU-aaa.lock", "cuda-GPU-bbb.lock"]
    visible("GPU-ccc")
    only = dev.place("auto")
    assert only.lock is not None and (tmp_path / "cuda-GPU-ccc.lock").exists()
    for placement in (first, second, only):
        placement.lock.close()


def test_explicit_device_and_single_runs_are_not_leased(monkeypatch):
    monkeypatch.delenv(dev.CPU_WORKERS_ENV, raising=False)
    assert dev.place("cpu").describe() == "cpu" and dev.place("cpu").lock is None
    if not torch.cuda.is_available():
        assert dev.place("auto").lock is None
    monkeypatch.setenv(dev.CPU_WORKERS_ENV, "two")
    with pytest.raises(ResnetlabError, match="RESNETLAB_CPU_WORKERS='two': expected a whole"):
        dev.place("auto")
    monkeypatch.setenv(dev.CPU_WORKERS_ENV, "4096")
    with pytest.raises(ResnetlabError, match="RESNETLAB_CPU_WORKERS=4096 but this process"):
        dev.place("auto")


def test_default_store_is_the_projects_even_from_a_temporary_copy(tmp_path, monkeypatch):
    """DVC runs a queued experiment's stages in a copy under .dvc/tmp/exps with DVC_ROOT set to
    the project: the runs, and a new experiment's artifacts, must land in the project."""
    root, copy = tmp_path / "project", tmp_path / "project/.dvc/tmp/exps/tmp123"
    copy.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.chdir(copy)
    assert store.tracking_uri() == f"sqlite:///{root / 'mlflow.db'}"
    client = store.client()
    experiment = client.get_experiment(store.experiment_id(client, "queued"))
    assert experiment.artifact_location == (root / "mlruns").as_uri()
    assert (root / "mlflow.db").exists() and not (copy / "mlflow.db").exists()
    monkeypatch.delenv("DVC_ROOT")
    assert store.tracking_uri() == f"sqlite:///{copy / 'mlflow.db'}"


def test_a_checkpoint_from_more_gpus_resumes_where_fewer_are_visible(monkeypatch) -> None:
    """Was: every visible GPU's random state saved and restored with `set_rng_state_all`, so a
    checkpoint written where 4 GPUs were visible raised IndexError where 1 is. Now only the
    training GPU's state is saved; an older checkpoint's list gives that GPU's entry, or none
    (nothing else draws from it: augmentation has its own generators). Simulated on the CPU."""
    from resnetlab.train import checkpoint

    restored: list[tuple[torch.Tensor, torch.device]] = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((s, device)))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.tensor([7]))
    cpu_state = torch.get_rng_state()
    four_gpus = [torch.tensor([i]) for i in range(4)]
    gpu0, gpu2, gpu5 = (torch.device("cuda", i) for i in (0, 2, 5))

    checkpoint.set_rng_state({"torch": cpu_state, "cuda": four_gpus}, gpu2)
    assert restored == [(four_gpus[2], gpu2)]
    checkpoint.set_rng_state({"torch": cpu_state, "cuda": four_gpus}, gpu5)  # no entry for it
    assert len(restored) == 1
    state = checkpoint.rng_state(gpu0)
    assert state["cuda"].tolist() == [7]  # one GPU's state, not one per visible GPU
    checkpoint.set_rng_state(state, gpu0)
    assert restored[-1][1] == gpu0
    # On the CPU nothing of CUDA is saved or restored.
    assert set(checkpoint.rng_state(torch.device("cpu"))) == {"torch"}
    checkpoint.set_rng_state({"torch": cpu_state, "cuda": four_gpus}, torch.device("cpu"))
    assert len(restored) == 2


def test_each_rank_binds_its_gpu_before_the_process_group_starts(monkeypatch) -> None:
    """torchrun's rank 1 of 2 on CUDA: `set_device(cuda:1)` first, then the NCCL group bound
    to that GPU (`device_id`); was: the group started before `set_device` and without a
    device, so NCCL's first context could land on cuda:0. On the CPU: gloo, no device."""
    import torch.distributed as tdist

    from resnetlab.train import distributed

    calls: list[tuple] = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(tdist, "init_process_group", lambda **kw: calls.append(("group", kw)))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))

    info, device = distributed.init(torch.device("cuda"))
    assert (info.rank, info.world, info.local_rank) == (1, 2, 1)
    assert device == torch.device("cuda", 1)
    assert calls == [("set_device", device), ("group", {"backend": "nccl", "device_id": device})]

    calls.clear()
    info, device = distributed.init(torch.device("cpu"))
    assert device == torch.device("cpu") and calls == [("group", {"backend": "gloo"})]
