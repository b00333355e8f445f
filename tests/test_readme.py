"""Every command in the README is checked, so none can rot: each `dvc` line against DVC's own
parser, each `dvc exp run -S` against DVC's override rules (a key must exist unless prefixed
`+`) and then our validation, each `dvc repro` target against the pipeline's stages, each
`resnetlab` line against our parser; the quick run yields the epochs it promises."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from resnetlab.cli import _chosen_stage, build_parser
from resnetlab.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
SEPARATORS = {";", "&&", "||", "|"}
# Placeholders a reader replaces: `<run_id>`, `$(md5sum < FILE | cut ...)`.
PLACEHOLDER_MD5 = "0123456789abcdef0123456789abcdef"


def shell_blocks() -> list[str]:
    """The bodies of the README's ```sh and ```bash blocks, in order."""
    return re.findall(r"```(?:sh|bash)\n(.*?)```", README, flags=re.S)


def commands(block: str) -> list[list[str]]:
    """Each simple command of a shell block as argv: continuation lines joined, comments
    dropped, split at `;`, `&&`, `||` and `|`."""
    text = block.replace("\\\n", " ")
    text = re.sub(r"\$\([^)]*\)", PLACEHOLDER_MD5, text)
    text = re.sub(r"<([a-z_]+)>", r"\1", text)
    out: list[list[str]] = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        argv: list[str] = []
        for token in [*lexer, ";"]:
            if token in SEPARATORS:
                if argv:
                    out.append(argv)
                argv = []
            else:
                argv.append(token)
    return out


def all_commands() -> list[list[str]]:
    return [argv for block in shell_blocks() for argv in commands(block)]


def dvc_args(argv: list[str]):
    from dvc.cli import parse_args

    try:
        return parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"DVC refuses `{shlex.join(argv)}` (see its usage message above)")


def params_after(overrides: list[str], tmp_path: Path) -> Params:
    """The shipped params.yaml with `dvc exp run -S` overrides applied by DVC's own code (its
    rules: an unknown key without `+` is refused), then loaded as every stage loads it."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    apply_overrides(path, overrides)
    return load_params(path)


def stage_names() -> set[str]:
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return {stage.addressing for stage in repo.index.stages}


def test_every_dvc_command_parses_and_every_override_loads(tmp_path):
    # A command run by a wrapper (`python bench/record_study.py --out DIR -- dvc exp run ...`)
    # is checked like the others.
    wrapped = [a[a.index("--") + 1 :] for a in all_commands() if a[0] == "python" and "--" in a]
    dvc = [argv for argv in [*all_commands(), *wrapped] if argv and argv[0] == "dvc"]
    assert len(dvc) >= 15, "the README's dvc commands were found"
    stages = stage_names()
    for argv in dvc:
        args = dvc_args(argv)
        if argv[1:3] == ["exp", "run"]:
            for override in args.set_param or []:
                key = override.split("=", 1)[0].lstrip("+")
                top = key.split(".")[0]
                assert top in (
                    *("data", "mlflow", "train", "variants", "run_variants", "diagnose"),
                    *("evaluate", "seeds"),
                )
            params_after(list(args.set_param or []), tmp_path)
        if argv[1] == "repro":
            for target in args.targets:
                assert target in stages or any(s.startswith(f"{target}@") for s in stages), (
                    f"`{shlex.join(argv)}`: no stage {target!r}; stages: {sorted(stages)}"
                )


def test_an_override_that_breaks_dvcs_rules_or_ours_is_caught(tmp_path):
    # The test above can fail: the command this README once had, and a wrongly typed value.
    from dvc.exceptions import InvalidArgumentError

    from resnetlab.errors import ConfigError

    with pytest.raises(InvalidArgumentError):
        params_after(["variants.resnet56.lr=0.05"], tmp_path)  # resnet56 sets no lr: needs +
    with pytest.raises(ConfigError, match=r"^train\.max_epochs: 'two' is not allowed"):
        params_after(["train.max_epochs=two"], tmp_path)
    assert params_after(["+variants.resnet56.lr=0.05"], tmp_path).variant("resnet56").train.lr


def test_every_resnetlab_command_parses():
    checked = 0
    for argv in all_commands():
        if argv[0] == "torchrun":  # torchrun [options] -m resnetlab ...
            argv = argv[argv.index("-m") + 1 :]
        if argv[0] != "resnetlab":
            continue
        try:
            build_parser(_chosen_stage(argv[1:])).parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"resnetlab refuses `{shlex.join(argv)}`")
        checked += 1
    assert checked >= 4


def test_quick_run_shortens_every_variant(tmp_path):
    # The block right under the two set-up commands holds the quick run, alone.
    blocks = shell_blocks()
    assert len(blocks[0].strip().splitlines()) == 2  # the set-up commands (test_repo.py)
    (quick,) = commands(blocks[1])
    assert quick[:3] == ["dvc", "exp", "run"]
    shipped = load_params(REPO / "params.yaml")
    params = params_after(list(dvc_args(quick).set_param), tmp_path)
    # What the README promises: "every variant, 2 epochs, on 5,000 of the training images".
    promise = re.search(r"every variant, (\d+) epochs, on ([\d,]+) of\s+the training", README)
    assert promise, "the sentence introducing the quick run"
    epochs, images = int(promise[1]), int(promise[2].replace(",", ""))
    assert params.data.subset == images
    assert set(params.variants) == set(shipped.variants)
    assert {v.train.epochs for v in params.variants.values()} == {epochs}
    # ... including the variants whose recipes set their own (longer) epochs.
    assert {shipped.variant(v).train.epochs for v in ("resnet18", "resnet50_transfer")} == {
        200,
        10,
    }
    # The same command, with the same promise, where the README lists shorter runs.
    shorter = [c for b in blocks[2:] for c in commands(b) if c[:3] == ["dvc", "exp", "run"]]
    assert quick in shorter
    assert f"every variant, {epochs} epochs on {images // 1000}k images" in README


def test_readme_speaks_of_the_project_alone():
    for word in ("/work/", "/tmp/", "worktree", "helper", "session"):
        assert word not in README, word
    # `../shared` appears only as the folder the optional real-data test looks for.
    for m in re.finditer(r"\.\./shared", README):
        assert "smoke test" in README[max(0, m.start() - 120) : m.start()]
