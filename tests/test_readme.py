"""Every command in the README and in the docs (docs/**/*.md) is checked, so none can rot: each
`dvc` line against DVC's own parser, each `dvc exp run -S` against DVC's override rules (a key
must exist unless prefixed `+`) and then our validation, each stage named on a `dvc repro`,
`dvc exp run` or `dvc commit` line against the pipeline's stages, each `resnetlab` line against
our parser; the README stays one screen-ish, warns before the long run, and its first run and
the docs' quick run yield what they promise. Commands of other programs (`mlflow`, `curl`,
`pytest`, `python bench/...` unless it wraps a `dvc` command after `--`) are not checked."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from resnetlab.cli import _chosen_stage, build_parser
from resnetlab.core.config import Params
from resnetlab.core.params import load_params

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
# Every page of the docs site, keyed by its path relative to the repository.
DOCS = {str(p.relative_to(REPO)): p.read_text() for p in sorted((REPO / "docs").rglob("*.md"))}
SEPARATORS = {";", "&&", "||", "|"}
# Placeholders a reader replaces: `<run_id>`, `$(md5sum < FILE | cut ...)`.
PLACEHOLDER_MD5 = "0123456789abcdef0123456789abcdef"
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def shell_blocks(text: str = README) -> list[str]:
    """The bodies of the ```sh and ```bash blocks of `text` (the README by default), in order."""
    return re.findall(r"```(?:sh|bash)\n(.*?)```", text, flags=re.S)


def commands(block: str) -> list[list[str]]:
    """Each simple command of a shell block as argv: continuation lines joined, comments
    dropped, split at `;`, `&&`, `||` and `|`, leading `NAME=value` assignments dropped."""
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
                while argv and ENV_ASSIGNMENT.match(argv[0]):
                    argv.pop(0)
                if argv:
                    out.append(argv)
                argv = []
            else:
                argv.append(token)
    return out


def all_commands() -> list[list[str]]:
    """Every command of the README and of every docs page."""
    texts = [README, *DOCS.values()]
    return [argv for text in texts for block in shell_blocks(text) for argv in commands(block)]


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


def stage_names(params: Path | None = None) -> set[str]:
    """The pipeline's stages, as `dvc.yaml` expands them with the shipped params.yaml or with
    `params` (e.g. one with `seeds=[0,1,2]` applied, whose stages include `train@<v>-2`)."""
    from dvc.repo import Repo

    root = REPO
    if params is not None:
        root = params.parent / "project"
        root.mkdir(exist_ok=True)
        shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
        shutil.copy(params, root / "params.yaml")
        if not (root / ".dvc").exists():
            Repo.init(str(root), no_scm=True).close()
    with Repo(str(root)) as repo:
        return {stage.name for stage in repo.index.stages}


def test_every_dvc_command_parses_and_every_override_loads(tmp_path):
    # A command run by a wrapper (`python bench/record_study.py --out DIR -- dvc exp run ...`)
    # is checked like the others.
    wrapped = [a[a.index("--") + 1 :] for a in all_commands() if a[0] == "python" and "--" in a]
    dvc = [argv for argv in [*all_commands(), *wrapped] if argv and argv[0] == "dvc"]
    assert len(dvc) >= 30, "the README's and the docs' dvc commands were found"
    shipped = stage_names()
    for argv in dvc:
        args = dvc_args(argv)
        stages = shipped
        if argv[1:3] == ["exp", "run"]:
            for override in args.set_param or []:
                key = override.split("=", 1)[0].lstrip("+")
                top = key.split(".")[0]
                assert top in (
                    *("data", "mlflow", "train", "variants", "run_variants", "diagnose"),
                    *("evaluate", "seeds"),
                )
            params_after(list(args.set_param or []), tmp_path)
            if args.targets and args.set_param:  # the stages as the overrides expand them
                stages = stage_names(tmp_path / "params.yaml")
        if argv[1] in ("repro", "commit") or argv[1:3] == ["exp", "run"]:
            for target in args.targets or []:
                assert target in stages or any(s.startswith(f"{target}@") for s in stages), (
                    f"`{shlex.join(argv)}`: no stage {target!r}; stages: {sorted(stages)}"
                )


def test_an_override_that_breaks_dvcs_rules_or_ours_is_caught(tmp_path):
    # The test above can fail: a command the README once had, and a wrongly typed value.
    from dvc.exceptions import InvalidArgumentError

    from resnetlab.core.errors import ConfigError

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
    assert checked >= 8


def test_every_docs_page_is_checked():
    # The docs' commands are found: the pages exist and most hold shell blocks.
    assert "docs/getting-started.md" in DOCS
    assert sum(bool(shell_blocks(text)) for text in DOCS.values()) >= 8


def test_readme_is_short_and_warns_before_the_long_run():
    assert len(README.splitlines()) <= 200
    # The set-up commands end in `dvc repro`, the whole pipeline: its cost is said before them,
    # once, with a link to the table it comes from.
    before, after = README.split("```bash", 1)
    assert re.search(r"about \d+ days", before) and "docs/results.md#what-a-run-costs" in before
    assert not re.search(r"\d+ days", after), "the README states the long run's cost once"
    assert "## What a run costs" in DOCS["docs/results.md"]


def test_first_run_beside_the_setup_commands_is_short(tmp_path):
    # The block right under the two set-up commands: install without the pipeline, then one
    # variant's train and evaluate stages; the next block runs the same from an offline copy.
    blocks = shell_blocks()
    assert len(blocks[0].strip().splitlines()) == 2  # the set-up commands (test_repo.py)
    install, first = commands(blocks[1])[-2:]
    assert install[:2] == ["pip", "install"] and "dvc" not in install
    assert first[:2] == ["dvc", "repro"]
    (target,) = dvc_args(first).targets
    variant = target.split("@", 1)[1].rsplit("-", 1)[0]
    # What the README promises: the 28-epoch recipe of the measured runs it links to.
    shipped = load_params(REPO / "params.yaml")
    assert f"{shipped.variant(variant).train.epochs}-epoch recipe" in README
    assert variant in shipped.run_variants
    (offline,) = commands(blocks[2])
    assert offline[:3] == ["dvc", "exp", "run"] and dvc_args(offline).targets == [target]
    params = params_after(list(dvc_args(offline).set_param), tmp_path)
    assert params.data.md5 == PLACEHOLDER_MD5 and params.data.url.endswith(".tar.gz")


def test_quick_run_shortens_every_variant(tmp_path):
    # Getting started introduces the quick run, alone in the block after its promise.
    page = DOCS["docs/getting-started.md"]
    promise = re.search(r"every variant, (\d+) epochs, on ([\d,]+) of\s+the training", page)
    assert promise, "the sentence introducing the quick run"
    (quick,) = commands(shell_blocks(page[promise.end() :])[0])
    assert quick[:3] == ["dvc", "exp", "run"]
    shipped = load_params(REPO / "params.yaml")
    params = params_after(list(dvc_args(quick).set_param), tmp_path)
    # What the page promises: "every variant, 2 epochs, on 5,000 of the training images".
    epochs, images = int(promise[1]), int(promise[2].replace(",", ""))
    assert params.data.subset == images
    assert set(params.variants) == set(shipped.variants)
    assert {v.train.epochs for v in params.variants.values()} == {epochs}
    # ... including the variants whose recipes set their own (longer) epochs.
    assert {shipped.variant(v).train.epochs for v in ("resnet18", "resnet50_transfer")} == {
        200,
        10,
    }
    # The same command, with the same promise, where the page lists shorter runs.
    later = shell_blocks(page[promise.end() :])[1:]
    shorter = [c for b in later for c in commands(b) if c[:3] == ["dvc", "exp", "run"]]
    assert quick in shorter
    assert f"every variant, {epochs} epochs on {images // 1000}k images" in page


def _anchors(markdown: str) -> set[str]:
    """The anchors of a page's headings, as GitHub and MkDocs both make them."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", markdown, flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower().replace("`", "")).replace(" ", "-") for h in headings}


def test_readme_links_into_the_docs_resolve():
    links = re.findall(r"\]\((docs/[^)#]+)(?:#([^)]+))?\)", README)
    assert len(links) >= 10
    for path, anchor in links:
        assert path in DOCS, f"README links to {path}, which does not exist"
        if anchor:
            assert anchor in _anchors(DOCS[path]), f"README links to {path}#{anchor}: no heading"
    for anchor in re.findall(r"\]\(#([^)]+)\)", README):
        assert anchor in _anchors(README), f"README links to #{anchor}: no heading"


def test_readme_and_docs_speak_of_the_project_alone():
    for name, text in {"README.md": README, **DOCS}.items():
        for word in ("/work/", "/tmp/", "worktree", "helper", "session", "CEO"):
            assert word not in text, f"{name}: {word}"
        assert not re.search(r"\bissue \d", text, re.I), f"{name}: an issue number"
        # `../shared` appears only as the folder the optional real-data test looks for.
        for m in re.finditer(r"\.\./shared", text):
            assert "smoke test" in text[max(0, m.start() - 120) : m.start()], name
