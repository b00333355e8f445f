"""Params that parse but make no sense are refused with the key; hostile variant names never
reach a shell."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from dvc_project import DvcProject, tiny_params

from resnetlab.core.errors import ConfigError
from resnetlab.core.params import check_batch_fits, load_params, parse_params


def params(variant: dict | None = None, data: dict | None = None, **train) -> dict:
    return {
        "data": data or {},
        "train": {"epochs": 10, **train},
        "variants": {"tiny": {"model": {"name": "resnet_v1", "depth": 8}, **(variant or {})}},
    }


# ---------------------------------------------------------------------------------------------
# Every float is finite


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", ".NaN", "inf", "nan", "1e999"])
def test_non_finite_float_is_refused_naming_the_key(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(f"train:\n  lr: {text}\nvariants: {{}}\n")
    with pytest.raises(
        ConfigError, match=r"^train\.lr: .* is not allowed; expected a finite number$"
    ):
        load_params(path)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (params(weight_decay=float("inf")), "train.weight_decay"),
        (params({"warmup_lr": float("nan")}), "variants.tiny.warmup_lr"),
        (params(milestones=[0.5, float("inf")]), r"train.milestones\[1\]"),
        (params(warmup_epochs=float("nan")), "train.warmup_epochs"),
        (params(lr=10**400), "train.lr"),  # an int no float can hold
    ],
)
def test_every_float_param_must_be_finite(raw, key):
    with pytest.raises(ConfigError, match=rf"^{key}: .* expected a finite number$"):
        parse_params(raw)


def test_large_finite_values_still_pass():
    # Finite but absurd is the training's business (a non-finite loss stops it with a hint).
    assert parse_params(params(lr=1e30)).variant("tiny").train.lr == 1e30


# ---------------------------------------------------------------------------------------------
# Milestones within the epochs


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (params(milestones=[5, 10]), "train.milestones"),  # 10 of 10 epochs: never applies
        (params(milestones=[91, 136], epochs=182, variant=None), None),
        (params({"epochs": 50}, milestones=[91, 136], epochs=182), "variants.tiny.milestones"),
    ],
)
def test_milestone_epoch_number_beyond_the_last_epoch_is_refused(raw, key):
    if key is None:
        assert parse_params(raw).variant("tiny").train.milestones == (91, 136)
        return
    with pytest.raises(
        ConfigError, match=rf"^{key}: \[.*\] is not allowed; expected epoch numbers below epochs="
    ):
        parse_params(raw)


def test_milestones_of_another_schedule_are_not_checked():
    raw = params({"epochs": 10, "schedule": "cosine"}, milestones=[91, 136], epochs=182)
    assert parse_params(raw).variant("tiny").train.schedule == "cosine"


def test_milestone_fractions_scale_with_any_epochs():
    # [0.5, 0.75] of 2 epochs reaches epoch 2, which never applies; fractions are relative by
    # design and the README's quick run (-S train.epochs=2) uses the shipped ones.
    for epochs in (1, 2, 182):
        parse_params(params(milestones=[0.5, 0.75], epochs=epochs))
    assert parse_params(params(milestones=[9], epochs=10)).train.milestones == (9,)


# ---------------------------------------------------------------------------------------------
# The batch fits the training split


# ---------------------------------------------------------------------------------------------
# train.max_epochs caps every variant after its own overrides


def test_max_epochs_caps_variants_that_set_their_own_epochs():
    raw = params({"epochs": 200, "milestones": [60, 120, 160], "warmup_epochs": 2}, max_epochs=2)
    raw["variants"]["short"] = {"model": {"name": "plain", "depth": 8}, "epochs": 1}
    loaded = parse_params(raw)
    tiny = loaded.variant("tiny").train
    # The schedule is compressed with the run: milestones keep their share of it (as
    # fractions), so does the warm-up; the recipe as written was valid at 200 epochs.
    assert tiny.epochs == 2 and tiny.max_epochs == 2
    assert tiny.milestones == pytest.approx((0.3, 0.6, 0.8))
    assert tiny.warmup_epochs == pytest.approx(2 * 2 / 200)
    assert loaded.variant("short").train.epochs == 1  # already shorter: left alone
    assert loaded.train.epochs == 10  # train itself keeps its value; variants are capped
    assert parse_params(params(max_epochs=0)).variant("tiny").train.epochs == 10  # 0 = no cap


def test_the_recipe_source_names_the_key_each_value_came_from():
    """Was: a run description said `variants.tiny (epochs, step_size)` for values that
    `train.max_epochs` set; now the variant's own keys and the cap's are told apart."""
    raw = params({"lr": 0.05}, max_epochs=2, epochs=200, milestones=[60, 120], warmup_epochs=2)
    raw["variants"]["short"] = {
        "model": "plain",
        "epochs": 1,
        "milestones": [0.5],
        "warmup_epochs": 0,
    }
    loaded = parse_params(raw)
    tiny, short = loaded.recipe_sources["tiny"], loaded.recipe_sources["short"]
    capped = ("epochs", "milestones", "step_size", "warmup_epochs")
    assert tiny.own == ("lr",) and tiny.capped == capped
    assert tiny.describe("tiny", 2) == (
        "params.yaml `train` + variants.tiny (lr) + train.max_epochs=2 (epochs, milestones, "
        "step_size, warmup_epochs)"
    )
    assert short.describe("short", 2) == (
        "params.yaml `train` + variants.short (epochs, milestones, warmup_epochs)"
    )
    plain = parse_params(params()).recipe_sources["tiny"]
    assert plain.describe("tiny", 0) == "params.yaml `train`"


def test_max_epochs_is_validated_and_only_under_train():
    with pytest.raises(ConfigError, match=r"^train\.max_epochs: -1 is not allowed; expected 0"):
        parse_params(params(max_epochs=-1))
    with pytest.raises(ConfigError, match=r"^train\.max_epochs: 'two' is not allowed"):
        parse_params(params(max_epochs="two"))
    with pytest.raises(
        ConfigError, match=r"^variants\.tiny\.max_epochs: not allowed in a variant; train\.max"
    ):
        parse_params(params({"max_epochs": 2}))
    # The recipe as written is still checked (a milestone past its 10 epochs), cap or not.
    with pytest.raises(ConfigError, match=r"^variants\.tiny\.milestones"):
        parse_params(params({"milestones": [12]}, max_epochs=2))


def test_batch_larger_than_the_subset_is_refused_at_load():
    with pytest.raises(
        ConfigError,
        match=r"^variants\.tiny\.batch_size: 128 is not allowed; expected at most the 100 images",
    ):
        parse_params(params(batch_size=128, data={"subset": 100}))
    parse_params(params(batch_size=100, data={"subset": 100}))
    parse_params(params(batch_size=128))  # no subset: the split's size is known only later


def test_check_batch_fits_names_the_variant_and_the_split():
    variant = parse_params(params({"batch_size": 300})).variant("tiny")
    check_batch_fits(variant, 300)
    with pytest.raises(
        ConfigError,
        match=r"^variants\.tiny\.batch_size: 300 is not allowed; expected at most the 250 images "
        r"of the training split$",
    ):
        check_batch_fits(variant, 250)


# ---------------------------------------------------------------------------------------------
# Duplicate keys


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "train:\n  lr: 0.1\n  epochs: 3\n  lr: 0.5\nvariants: {}\n",
            r"line 4: duplicate key 'lr' \(first on line 2\)",
        ),
        (
            "variants:\n  a: {model: plain}\n  b: {model: plain}\n  a: {model: resnet_v1}\n",
            r"line 4: duplicate key 'a' \(first on line 2\)",
        ),
        ("train: {lr: 0.1, lr: 0.2}\n", r"line 1: duplicate key 'lr' \(first on line 1\)"),
        (
            "data: {}\ntrain: {}\ndata: {seed: 1}\n",
            r"line 3: duplicate key 'data' \(first on line 1\)",
        ),
    ],
)
def test_duplicate_key_is_refused_with_its_line(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{path}, {message}; each key may appear once"):
        load_params(path)


def test_merge_keys_and_the_shipped_params_still_load(tmp_path):
    # `<<: *anchor` followed by an override of a merged key is not a duplicate.
    path = tmp_path / "params.yaml"
    path.write_text(
        "variants:\n  a: &a {model: {name: plain, depth: 8}, epochs: 4}\n"
        "  b:\n    <<: *a\n    epochs: 6\n"
    )
    loaded = load_params(path)
    assert loaded.variant("b").train.epochs == 6 and loaded.variant("a").train.epochs == 4
    assert load_params(Path(__file__).resolve().parents[1] / "params.yaml").variants


# ---------------------------------------------------------------------------------------------
# Training seeds


def test_seeds_default_and_per_run_seed():
    assert parse_params(params()).seeds == (0,)
    raw = {**params(), "seeds": [3, 1, 2]}
    config = parse_params(raw)
    assert config.seeds == (3, 1, 2)  # the order given: it is the order of the runs
    tiny = config.variant("tiny")
    seeded = tiny.with_seed(2)
    assert seeded.train.seed == 2 and seeded.model == tiny.model
    assert seeded.fingerprint() != tiny.fingerprint()  # a checkpoint resumes its own seed only


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ([], r"seeds: \[\] is not allowed; expected a non-empty list of distinct integers"),
        ([0, 0], r"seeds: \[0, 0\] is not allowed; expected a non-empty list of distinct"),
        ([0, -1], r"seeds\[1\]: -1 is not allowed; expected an integer in 0\.\.4294967295"),
        (
            [2**70],
            r"^seeds\[0\]: 1180591620717411303424 is not allowed; expected an integer in "
            r"0\.\.4294967295 \(2\*\*32 - 1\)$",
        ),
        ([2**32], r"seeds\[0\]: 4294967296 is not allowed"),
        ([True], r"seeds\[0\]: True is not allowed"),
        (0, r"seeds: 0 is not allowed; expected a non-empty list"),
    ],
)
def test_bad_seeds_are_refused(seeds, message):
    with pytest.raises(ConfigError, match=message):
        parse_params({**params(), "seeds": seeds})


def test_a_train_or_variant_seed_points_to_seeds():
    raw = params()
    raw["train"] = {**raw.get("train", {}), "seed": 1}
    with pytest.raises(ConfigError, match=r"^train.seed: the training seed comes from the top"):
        parse_params(raw)
    raw = params()
    raw["variants"]["tiny"]["seed"] = 1
    with pytest.raises(ConfigError, match=r"^variants.tiny.seed: the training seed comes from"):
        parse_params(raw)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("rotation", -1, r"augment.rotation: -1.0 is not allowed; expected 0..180 degrees"),
        ("channel_shift", 2, r"augment.channel_shift: 2.0 is not allowed; expected a fraction"),
    ],
)
def test_bad_augmentation_ranges_are_refused(key, value, message):
    raw = params()
    raw["variants"]["tiny"]["augment"] = {key: value}
    with pytest.raises(ConfigError, match=message):
        parse_params(raw)


# ---------------------------------------------------------------------------------------------
# compile, run_variants, evaluate.tta


@pytest.mark.parametrize(
    ("value", "ok"), [("auto", True), (True, True), (False, True), (1, False), ("true", False)]
)
def test_compile_is_auto_true_or_false(value, ok):
    if ok:
        assert parse_params(params(compile=value)).variant("tiny").train.compile == value
        return
    with pytest.raises(ConfigError, match=r"^train.compile: .* expected auto, true, false$"):
        parse_params(params(compile=value))


def test_run_variants_selects_declared_variants_only():
    raw = params()
    raw["variants"]["other"] = {"model": {"name": "plain", "depth": 8}}
    assert parse_params(raw).selected == ("tiny", "other")  # none listed: all
    assert parse_params({**raw, "run_variants": ["other"]}).selected == ("other",)
    with pytest.raises(
        ConfigError, match=r"^run_variants\[1\]: 'resnet8' is not a declared variant; declared: "
    ):
        parse_params({**raw, "run_variants": ["tiny", "resnet8"]})
    with pytest.raises(ConfigError, match=r"^run_variants: \['tiny', 'tiny'\] is not allowed"):
        parse_params({**raw, "run_variants": ["tiny", "tiny"]})


def test_evaluate_tta_default_and_per_variant():
    raw = {**params(), "evaluate": {"tta": "flip", "tta_variants": {"tiny": "flip_translate"}}}
    config = parse_params(raw).evaluate
    assert config.tta_for("tiny") == "flip_translate" and config.tta_for("other") == "flip"
    assert parse_params(params()).evaluate.tta_for("tiny") == "none"
    with pytest.raises(ConfigError, match=r"^evaluate.tta: 'mirror' is not allowed; expected no"):
        parse_params({**params(), "evaluate": {"tta": "mirror"}})
    with pytest.raises(ConfigError, match=r"^evaluate.tta_variants.nope: no such variant"):
        parse_params({**params(), "evaluate": {"tta_variants": {"nope": "flip"}}})


def test_flip_is_true_false_or_alternate():
    parsed = parse_params(params(augment={"flip": "alternate"}))
    assert parsed.train.augment.flip == "alternate"
    assert parse_params(params(augment={"flip": False})).train.augment.flip is False
    with pytest.raises(
        ConfigError,
        match=r"^train.augment.flip: 'yes' is not allowed; expected true, false, alternate$",
    ):
        parse_params(params(augment={"flip": "yes"}))


def test_shipped_params_run_every_variant_and_the_fast_recipe_keeps_resnet20():
    from resnetlab.report.published_file import load_published

    root = Path(__file__).resolve().parents[1]
    shipped = load_params(root / "params.yaml")
    # A variant declared but not listed would silently never train; the only ones left out are
    # declared for another dataset's published numbers (published.yaml) and none of CIFAR-10's,
    # the default: they train when a run names that dataset and them.
    results = load_published(root / "published.yaml").results
    cifar10 = {r.variant for r in results["cifar10"]}
    others = {r.variant for key, rows in results.items() if key != "cifar10" for r in rows}
    unlisted = set(shipped.variants) - set(shipped.run_variants)
    assert unlisted <= others - cifar10, sorted(unlisted - (others - cifar10))
    fast, paper = shipped.variant("resnet20_fast"), shipped.variant("resnet20")
    assert fast.model == paper.model  # the same network, only the recipe differs
    assert shipped.evaluate.tta_for("resnet20_fast") == "flip_grid"
    assert shipped.evaluate.tta_for("resnet20") == "none"  # the papers' single view


# ---------------------------------------------------------------------------------------------
# A hostile variant name under DVC


@pytest.mark.parametrize("name", ["x;touch PWNED", "x.y", "x y", "$(touch PWNED)", "-x"])
def test_variant_name_outside_dvcs_stage_name_rule_is_refused(name):
    raw = params()
    raw["variants"] = {name: raw["variants"]["tiny"]}
    with pytest.raises(ConfigError, match=r"expected a name of letters, digits, '_' and '-'"):
        parse_params(raw)


HOSTILE = "x;touch PWNED;$(touch PWNED2);`touch PWNED3`"


@pytest.mark.slow
def test_hostile_variant_name_never_reaches_the_shell(tiny_archive, tmp_path):
    """DVC builds `train@<key>` and `evaluate@<key>` from every key under `variants` and runs
    their commands through the shell; it does not check foreach keys. The commands in dvc.yaml
    take the name from $DVC_STAGE in quotes, so the payload stays an argument resnetlab refuses."""
    from dvc.repo import Repo

    raw = tiny_params(*tiny_archive)
    raw["variants"] = {HOSTILE: raw["variants"]["resnet8"]}
    raw["run_variants"] = [HOSTILE]
    project = DvcProject(tmp_path / "proj", raw)
    root = project.root

    # DVC's own view of the pipeline: the stage exists, its command does not hold the name.
    with Repo(str(root)) as repo:
        commands = {s.addressing.split(":")[-1]: s.cmd for s in repo.index.stages}
    assert set(commands) >= {f"train@{HOSTILE}-0", f"evaluate@{HOSTILE}-0"}
    assert not [cmd for cmd in commands.values() if "PWNED" in cmd or "touch" in cmd]

    # Run the stage for real (its upstream stages stand in: -s runs this one only, as a re-run
    # would once download and prepare are up to date).
    (root / "data/prepared").mkdir(parents=True)
    (root / "data/prepared/meta.json").write_text("{}")
    start = time.monotonic()
    res = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "repro", "-s", f"train@{HOSTILE}-0"],
        cwd=root,
        env=project.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert time.monotonic() - start < 180
    assert res.returncode != 0
    assert not [p.name for p in root.rglob("PWNED*")], "the payload ran"
    err = res.stdout + res.stderr
    assert f"variants.{HOSTILE}: '{HOSTILE}' is not allowed" in err
