"""docs/many-machines.md as its users run it, on one machine standing for several: a real
`mlflow server` on 127.0.0.1 (SQLite, artifacts proxied), a folder standing for the DVC remote, a
bare git repository standing for the git remote, and a fresh clone per machine with its own DVC
cache. Machine A runs the Slurm array job's script (as task 0, with Slurm's variables), machine B
the SkyPilot task's `run` commands (a sweep, through the queue), machine C the plain command and
is killed mid-run, then runs again; a fourth clone pulls everything and compares. Every command
comes from the page's own code blocks, its placeholders replaced."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from dvc_project import REPO, DvcProject, tiny_params
from tracking_server import free_port

pytestmark = pytest.mark.slow

PAGE = REPO / "docs" / "many-machines.md"
SERVER_START_S = 180  # `mlflow server` on a busy 2-core machine: 20-60 s
RUN_S = 600


def blocks(heading: str) -> list[list[str]]:
    """The ```sh blocks under `heading` (to the next heading): each a list of commands."""
    text = PAGE.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [[line for line in block.splitlines() if line.strip()] for block in found]


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def train_processes(under: Path) -> list[int]:
    """Pids of `resnetlab train` processes working under `under` (their cwd)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        training = b"train" in cmd and any(part.endswith(b"resnetlab") for part in cmd[:2])
        if training and cwd.startswith(str(under)):
            pids.append(int(entry.name))
    return pids


def running_training(url: str, experiment: str) -> bool:
    """Does the server hold a RUNNING training run of DVC experiment `experiment`?"""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(url)
    exp = c.get_experiment_by_name("e2e")
    if exp is None:
        return False
    query = f"tags.stage = 'train' and tags.dvc_exp_name = '{experiment}'"
    return any(r.info.status == "RUNNING" for r in c.search_runs([exp.experiment_id], query))


STARTED: list[subprocess.Popen[str]] = []  # every machine's command, stopped at the end


class Machine:
    """A clone of the git remote at `root`, with its own DVC cache, and the environment a
    machine of the study has."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root = root
        self.env = {**env, "PYTHONPATH": str(root / "src")}

    def run(self, cmd: str, **env: str) -> subprocess.Popen[str]:
        log = (self.root.parent / f"{self.root.name}.log").open("a")
        proc = subprocess.Popen(
            ["bash", "-c", cmd],
            cwd=self.root if self.root.exists() else self.root.parent,
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        log.close()
        STARTED.append(proc)
        return proc

    def log(self) -> str:
        return (self.root.parent / f"{self.root.name}.log").read_text()


def finish(proc: subprocess.Popen[str], machine: Machine, ok: bool = True) -> None:
    rc = proc.wait(timeout=RUN_S)
    assert (rc == 0) is ok, f"rc {rc}:\n{machine.log()[-4000:]}"


@pytest.fixture(scope="module")
def study(tiny_archive, tmp_path_factory: pytest.TempPathFactory):
    archive, md5 = tiny_archive
    tmp = tmp_path_factory.mktemp("machines")

    # The shared services: the page's `mlflow server` command, on 127.0.0.1 and a free port.
    ((server_cmd,),) = blocks("The shared services, once")[:1]
    port = free_port()
    argv = shlex.split(server_cmd.replace("0.0.0.0", "127.0.0.1").replace("5000", str(port)))
    (tmp / "server").mkdir()
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    server_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    server = subprocess.Popen(
        argv,
        cwd=tmp / "server",
        env=server_env,
        stdout=(tmp / "server.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: healthy(url) or server.poll() is not None, SERVER_START_S, "the server")
        assert server.poll() is None, (tmp / "server.log").read_text()[-3000:]
        yield run_study(tmp, url, archive, md5)
    finally:
        for proc in [*STARTED, server]:  # after a failure, nothing is left running
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL if proc is not server else signal.SIGTERM)
        server.wait(timeout=30)


def run_study(tmp: Path, url: str, archive: Path, md5: str) -> dict:
    params = tiny_params(archive, md5)
    params["train"]["epochs"] = 1
    project = DvcProject(tmp / "project", params)
    shutil.copytree(REPO / "launch", project.root / "launch")
    project.env["MLFLOW_TRACKING_URI"] = url
    git_remote, dvc_remote = tmp / "origin.git", tmp / "dvc-store"
    subprocess.run(["git", "init", "-q", "--bare", str(git_remote)], check=True)
    project.git("remote", "add", "origin", str(git_remote))
    project.commit("the project")

    # The project, once: the page's commands, its bucket replaced by a folder.
    _, once = blocks("The shared services, once")
    for line in once:
        project.run("bash", "-c", line.replace("s3://my-bucket/resnetlab", str(dvc_remote)))

    env = {**project.env, "RESNETLAB_ACTIVATE": "true"}  # resnetlab and dvc are on PATH

    def clone(name: str) -> Machine:
        subprocess.run(["git", "clone", "-q", str(git_remote), str(tmp / name)], check=True)
        return Machine(tmp / name, env)

    plain, slurm, _ = blocks("Each machine: its share of the experiments")
    (sweep,) = blocks("Sweeps")

    # Machine A: Slurm's task 0 of the page's sbatch command, with our variants.
    submit = shlex.split(slurm[0])
    exports = _exports(submit)
    variants = exports["RESNETLAB_VARIANTS"].replace("resnet20", "plain8")
    (tmp / "node-a").mkdir()
    node_a = Machine(tmp / "node-a" / "resnetlab-101-0", env)
    a = node_a.run(
        f"bash {REPO / submit[-1]}",
        RESNETLAB_VARIANTS=variants.replace("resnet56", "resnet8"),
        RESNETLAB_REPO=str(git_remote),
        RESNETLAB_SCRATCH=str(tmp / "node-a"),
        SLURM_ARRAY_JOB_ID="101",
        SLURM_ARRAY_TASK_ID="0",
    )

    # Machine B: the SkyPilot task's `run` commands in its uploaded checkout (a clone), with its
    # envs, running the page's sweep.
    task = yaml.safe_load((REPO / "launch/skypilot.yaml").read_text())
    node_b = clone("node-b")
    sky_env = {k: str(v) for k, v in task["envs"].items() if v is not None}
    sweep_args = shlex.join(shlex.split(sweep[0])[1:]).replace("resnet20", "resnet8")
    sky_env.update(RESNETLAB_ACTIVATE="true", EXPERIMENT_ARGS=sweep_args)
    b = node_b.run(task["run"], **sky_env)

    # Machine C: the plain commands, killed (SIGKILL) once its training run is on the server.
    node_c = clone("node-c")
    c_cmd = " && ".join(plain).replace("http://mlflow.internal:5000", url)
    c_cmd = c_cmd.replace("resnet110", "resnet8")
    c = node_c.run(c_cmd + " -S train.epochs=50")  # long enough to be caught training
    wait_for(lambda: running_training(url, "r110"), RUN_S, "machine C's training run")
    for pid in wait_for(lambda: train_processes(node_c.root), RUN_S, "machine C's training"):
        os.kill(pid, signal.SIGKILL)
    finish(c, node_c, ok=False)  # its experiment failed, and the script says so

    finish(a, node_a)
    finish(b, node_b)
    refs_before = _refs(git_remote)

    # Machine C again, in a fresh clone: the same commands now succeed.
    shutil.rmtree(node_c.root)
    node_c = clone("node-c")
    finish(node_c.run(c_cmd), node_c)

    # A fourth machine compares: the page's commands, the git URL ours.
    (compare,) = blocks("Comparing, from any machine")
    first, *rest = compare
    assert first == "git clone git@github.com:you/resnetlab.git && cd resnetlab"
    laptop = clone("laptop")
    shown = ""
    for line in rest:
        res = laptop.run(line, COLUMNS="200")
        finish(res, laptop)
        shown = laptop.log()
    return {
        "url": url,
        "refs_before": refs_before,
        "refs_after": _refs(git_remote),
        "shown": shown,
        "logs": {m.root.name: m.log() for m in (node_a, node_b, node_c)},
    }


def _exports(argv: list[str]) -> dict[str, str]:
    (export,) = [a for a in argv if a.startswith("--export=")]
    pairs = export.removeprefix("--export=").split(",")[1:]  # ALL, then NAME=value
    return dict(pair.split("=", 1) for pair in pairs)


def _refs(git_remote: Path) -> dict[str, str]:
    out = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps"],
        cwd=git_remote,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split() for line in out.splitlines())


def client(study: dict):
    from mlflow.tracking import MlflowClient

    return MlflowClient(study["url"])


def experiment_runs(study: dict) -> list:
    c = client(study)
    exp = c.get_experiment_by_name("e2e")
    return c.search_runs([exp.experiment_id], max_results=1000)


def test_every_machine_s_experiments_come_together_in_one_table(study):
    """The fourth clone pulled the experiments of A (Slurm), B (SkyPilot, a two-point sweep)
    and C (re-run after its kill) and shows them side by side in the readable form."""
    shown = study["shown"]
    names = set(study["refs_after"])
    assert len(names) == 4, names  # plain8-101, the sweep's two, r110
    assert "plain8-101" in shown and "r110" in shown, shown
    table = shown[shown.index("Experiment") :]
    assert "metrics/plain8/seed0.json:accuracy" in table
    assert "metrics/resnet8/seed0.json:accuracy" in table
    assert "train.lr" in table  # the swept key is a column
    assert max(len(line) for line in table.splitlines()) <= 200


def test_pushed_experiments_are_never_overwritten(study):
    before, after = study["refs_before"], study["refs_after"]
    assert {ref: after.get(ref) for ref in before} == before
    assert len(after) == len(before) + 1  # C's, pushed last


def test_the_server_holds_every_run_once_nested_under_its_experiment(study):
    runs = experiment_runs(study)
    parents = {r.info.run_id: r for r in runs if "resnetlab.parent_key" in r.data.tags}
    names = sorted(r.info.run_name for r in parents.values())
    assert len(names) == 4 and "plain8-101" in names and "r110" in names, names
    trained: dict[tuple[str, str, str], list[str]] = {}
    for r in runs:
        tags = r.data.tags
        if tags.get("stage") != "train":
            continue
        assert tags.get("mlflow.parentRunId") in parents, tags  # nested, never loose
        key = (parents[tags["mlflow.parentRunId"]].info.run_name, tags["variant"], tags["seed"])
        trained.setdefault(key, []).append(r.info.status)
    # One FINISHED training run per experiment and variant; C's killed attempt ended KILLED
    # when the variant next started on this machine.
    assert sorted(trained) == sorted(
        [("plain8-101", "plain8", "0"), ("r110", "resnet8", "0")]
        + [(n, "resnet8", "0") for n in names if n not in ("plain8-101", "r110")]
    ), trained
    for key, statuses in trained.items():
        expected = ["FINISHED", "KILLED"] if key[0] == "r110" else ["FINISHED"]
        assert sorted(statuses) == expected, (key, statuses)
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)


def test_the_registry_numbers_versions_in_the_order_they_were_registered(study):
    c = client(study)
    for model, count in (("resnetlab-plain8", 1), ("resnetlab-resnet8", 3)):
        versions = sorted(c.search_model_versions(f"name='{model}'"), key=lambda v: int(v.version))
        assert [int(v.version) for v in versions] == list(range(1, count + 1)), model
        stamps = [v.creation_timestamp for v in versions]
        assert stamps == sorted(stamps)
        assert len({v.run_id for v in versions}) == count
        assert all(c.get_run(v.run_id).info.status == "FINISHED" for v in versions)


def test_a_killed_worker_says_so_and_blocks_nobody(study):
    log = study["logs"]["node-c"]
    assert "r110 did not succeed; `dvc queue logs <name>` shows why" in log


@pytest.mark.parametrize("script", ["run-experiments.sh", "slurm-array.sbatch"])
def test_the_launch_scripts_parse(script):
    path = REPO / "launch" / script
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    assert os.access(path, os.X_OK) or script.endswith(".sbatch")
    if script.endswith(".sbatch"):
        # sbatch reads #SBATCH lines only up to the first command.
        lines = path.read_text().splitlines()[1:]
        first_command = next(i for i, line in enumerate(lines) if line and line[0] != "#")
        directives = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
        assert directives and max(directives) < first_command


def test_the_skypilot_task_has_what_sky_launch_needs():
    """SkyPilot's own parser accepts the file (checked with skypilot 0.14.1, which is not a
    dependency: `sky launch --dryrun` needs its online catalog); here, the parts the page relies
    on, and shell that parses."""
    task = yaml.safe_load((REPO / "launch/skypilot.yaml").read_text())
    assert task["workdir"] == "." and task["resources"]["accelerators"]
    assert task["envs"]["MLFLOW_TRACKING_URI"] is None  # sky refuses to launch without it
    for block in ("setup", "run"):
        assert subprocess.run(["bash", "-n"], input=task[block], text=True).returncode == 0
