"""The web app (`resnetlab app`): its data functions directly, and every page driven by
Streamlit's AppTest on a project with two tiny variants trained and evaluated for real."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from app_project import REGISTERED, free_port, healthy, mlflow_uri, start_app, wait_for
from PIL import Image
from streamlit import dataframe_util
from streamlit.testing.v1 import AppTest

from resnetlab.cli import build_parser, main
from resnetlab.core.errors import ResnetlabError
from resnetlab.data.prepared import load_prepared
from resnetlab.evaluate.classifier import load_classifier
from resnetlab.evaluate.images import load_image, predict
from resnetlab.tools import app as app_stage
from resnetlab.webapp import project as data
from resnetlab.webapp.project import Project

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TIMEOUT = 120  # seconds per AppTest run: the first one imports torch on a busy, shared CPU


@pytest.fixture
def in_project(app_project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run as `resnetlab app` runs the app: in the project folder, with its MLflow store."""
    monkeypatch.chdir(app_project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri(app_project))
    return app_project


def open_page(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(app_stage.APP_SCRIPT), default_timeout=TIMEOUT).run()
    if page is not None:
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, at.exception
    return at


def encoded(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, fmt)
    return out.getvalue()


def upload_set() -> list[tuple[str, bytes, str]]:
    """Ten images of every kind the issue names (PNG/JPEG, sizes, RGB/RGBA/greyscale) and a file
    that is not an image, as (name, bytes, mime type)."""
    rng = np.random.default_rng(1)
    files = []
    for i, (shape, fmt, mime) in enumerate(
        [
            ((32, 32, 3), "PNG", "image/png"),
            ((40, 50, 3), "PNG", "image/png"),
            ((480, 640, 3), "JPEG", "image/jpeg"),
            ((100, 100), "JPEG", "image/jpeg"),  # greyscale
            ((64, 64, 4), "PNG", "image/png"),  # RGBA
            ((20, 300, 3), "PNG", "image/png"),
            ((32, 32), "PNG", "image/png"),
            ((1200, 900, 3), "JPEG", "image/jpeg"),
            ((33, 31, 3), "JPEG", "image/jpeg"),
            ((16, 16, 3), "PNG", "image/png"),
        ]
    ):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        name = f"upload{i}.{'png' if fmt == 'PNG' else 'jpg'}"
        files.append((name, encoded(pixels, fmt), mime))
    files.insert(4, ("notes.png", b"remember to buy milk\n", "image/png"))
    return files


def as_shown(source: str) -> str:
    """Markdown `source` as the page shows it: backslash escapes (`webapp.ui.literal`) undone."""
    return re.sub(r"\\(.)", r"\1", source)


def markdown(at: AppTest) -> list[str]:
    return [as_shown(m.value) for m in at.markdown]


def captions(at: AppTest) -> list[str]:
    return [as_shown(c.value) for c in at.caption]


def grid_captions(at: AppTest, source: bool = False) -> list[str]:
    return [c if source else as_shown(c) for image in at.image for c in image.captions]


# --- data functions -------------------------------------------------------------------------


def test_evaluate_writes_index_and_confidence(app_project: Path):
    """predictions.csv: one row per test image in order, the predicted class and its softmax
    probability, as the model itself computes them (actual/predicted stay for DVC's plot)."""
    frame = pd.read_csv(app_project / "metrics/tiny/seed0/predictions.csv")
    assert list(frame.columns) == ["index", "actual", "predicted", "confidence"]
    test = load_prepared(app_project / "data/prepared", splits=("test",))
    assert frame["index"].tolist() == list(range(len(test.labels["test"])))
    model, record = load_classifier(app_project / "models/tiny/seed0/model.pt")
    with torch.no_grad():
        images = torch.from_numpy(test.images["test"]).permute(0, 3, 1, 2).float() / 255
        probs = torch.softmax(model(images), dim=1)
    conf, pred = probs.max(1)
    assert frame["actual"].tolist() == [record.classes[y] for y in test.labels["test"]]
    assert frame["predicted"].tolist() == [record.classes[i] for i in pred.tolist()]
    assert frame["confidence"].to_numpy() == pytest.approx(conf.numpy(), abs=1e-5)


def predictions_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "index": [0, 1, 2, 3, 4, 5],
            "actual": ["cat", "cat", "dog", "dog", "cat", "ship"],
            "predicted": ["dog", "cat", "cat", "cat", "dog", "ship"],
            "confidence": [0.6, 0.9, 0.7, 0.95, 0.8, 0.5],
        }
    )


def test_mistakes_are_filtered_and_most_confident_first():
    frame = predictions_frame()
    assert data.mistakes(frame)["index"].tolist() == [3, 4, 2, 0]
    assert data.mistakes(frame, actual="cat")["index"].tolist() == [4, 0]
    assert data.mistakes(frame, predicted="cat")["index"].tolist() == [3, 2]
    assert data.mistakes(frame, "dog", "cat")["index"].tolist() == [3, 2]
    assert data.mistakes(frame, "ship", "ship").empty  # the diagonal holds no mistakes
    counts = data.confusion_counts(frame, ["cat", "dog", "ship", "frog"])
    assert counts.loc["cat"].tolist() == [1, 2, 0, 0]
    assert counts.loc["dog"].tolist() == [2, 0, 0, 0]
    assert counts.loc["frog"].sum() == 0 and counts["frog"].sum() == 0


def test_right_wrong_lists_what_one_gets_right_and_the_other_wrong():
    a = predictions_frame()
    b = a.copy()
    b["predicted"] = ["cat", "dog", "dog", "cat", "cat", "frog"]
    b["confidence"] = [0.5, 0.7, 0.6, 0.4, 0.9, 0.99]
    # a right (1, 5), b wrong there; b right (0, 2, 4), a wrong there.
    a_only = data.right_wrong(a, b)
    assert a_only["index"].tolist() == [5, 1]  # by b's confidence: 0.99, 0.7
    assert a_only["predicted"].tolist() == ["frog", "dog"]
    assert data.right_wrong(b, a)["index"].tolist() == [4, 2, 0]
    assert data.right_wrong(a, a).empty


def test_variants_and_the_best_one(app_project: Path, tmp_path: Path):
    proj = Project(app_project)
    assert data.trained_variants(proj) == ["tiny", "tiny_plain"]
    assert data.evaluated_variants(proj) == ["tiny", "tiny_plain"]
    board = pd.read_csv(app_project / "reports/leaderboard.csv")
    assert data.leaderboard_order(proj) == board["variant"].tolist()
    best = board["variant"][0]
    assert data.best_variant(["tiny", "tiny_plain"], data.leaderboard_order(proj)) == best
    assert data.best_variant(["zzz", "tiny_plain"], ["tiny", "tiny_plain"]) == "tiny_plain"
    assert data.best_variant(["b", "a"], []) == "b"
    assert data.best_variant([], ["tiny"]) is None
    assert data.repro_command(proj, "train") == "dvc repro train@tiny-0"
    empty = Project(tmp_path)
    assert data.trained_variants(empty) == [] and data.leaderboard_order(empty) == []
    assert data.repro_command(empty, "evaluate") == "dvc repro evaluate@resnet20-0"


def test_old_or_broken_predictions_name_the_file_and_the_fix(tmp_path: Path):
    proj = Project(tmp_path)
    assert data.read_predictions(proj, "v") is None
    path = proj.predictions_file("v")
    path.parent.mkdir(parents=True)
    path.write_text("actual,predicted\ncat,dog\n")  # written before index and confidence
    with pytest.raises(ResnetlabError, match=r"predictions.csv: no column\(s\) index, confidence"):
        data.read_predictions(proj, "v")
    path.write_text("index,actual,predicted,confidence\n0,cat,dog,0.5\n0,cat,dog,0.5\n")
    with pytest.raises(ResnetlabError, match="dvc repro evaluate@v"):
        data.read_predictions(proj, "v")


def test_uploads_go_through_the_predict_path(app_project: Path, tmp_path: Path):
    model, record = load_classifier(app_project / "models/tiny/seed0/model.pt")
    files = upload_set()
    results = data.classify_uploads(
        model, record.classes, record.image_size, [(n, b) for n, b, _ in files]
    )
    assert [r.name for r in results] == [n for n, _, _ in files]
    (bad,) = [r for r in results if r.prediction is None]
    assert bad.name == "notes.png" and bad.error.startswith("notes.png: not an image")
    # The same files read from disk by `resnetlab predict`'s functions, in one batch as well.
    good = [(n, b) for n, b, _ in files if n != "notes.png"]
    for name, blob in good:
        (tmp_path / name).write_bytes(blob)
    arrays = [load_image(tmp_path / name, size=32) for name, _ in good]
    want = predict(model, record.classes, [n for n, _ in good], arrays, 5)
    assert [r.prediction for r in results if r.prediction is not None] == want


# --- pages ----------------------------------------------------------------------------------


def test_classify_page_defaults_to_the_best_variant_and_classifies_uploads(
    in_project: Path, tmp_path: Path, capsys
):
    at = open_page()
    (variant,) = at.selectbox
    assert variant.options == ["tiny", "tiny_plain"]
    best = data.leaderboard_order(Project(in_project))[0]
    assert variant.value == best

    files = upload_set()
    at.file_uploader[0].set_value(files)
    at.run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == [
        "notes.png: not an image (unknown or unsupported format)"
    ]
    # Each image's top class and probability, exactly as `resnetlab predict` prints them.
    for name, blob, _ in files:
        (tmp_path / name).write_bytes(blob)
    good = [n for n, _, _ in files if n != "notes.png"]
    argv = ["predict", "--variant", best, "--top-k", "1", *(str(tmp_path / n) for n in good)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    want = [re.sub(r"^.*/([^/]+): (\w+) ", r"\1: **\2** ", line) for line in lines]
    assert [m for m in markdown(at) if re.match(r"^upload\d", m)] == want
    charts = at.get("vega_lite_chart")
    assert len(charts) == 10
    # Each chart: the image's five most probable classes, the shown one first.
    for chart, line in zip(charts, want, strict=True):
        top5 = dataframe_util.convert_arrow_bytes_to_pandas_df(chart.proto.data.data)
        assert len(top5) == 5 and top5["probability"].is_monotonic_decreasing
        assert f"**{top5['class'][0]}** {100 * top5['probability'][0]:.1f}%" in line
    (summary,) = [c for c in captions(at) if "classified by" in c]
    m = re.fullmatch(rf"10 of 11 images classified by {best} in (\d+\.\d+) s", summary)
    assert m and float(m[1]) < 1.0, summary


def test_classify_page_uses_the_chosen_variant(in_project: Path):
    at = open_page()
    other = next(v for v in at.selectbox[0].options if v != at.selectbox[0].value)
    at.selectbox[0].set_value(other)
    at.file_uploader[0].set_value(upload_set()[:1])
    at.run()
    assert not at.exception, at.exception
    assert captions(at)[-1].startswith(f"1 of 1 images classified by {other} in")


def test_classify_page_with_a_logged_or_registered_mlflow_model(in_project: Path):
    at = open_page()
    at.radio[0].set_value("MLflow model").run()
    assert not at.exception, at.exception
    (choice,) = at.selectbox
    run_id = (in_project / "models/tiny/seed0/mlflow_run.json").read_text()
    logged = [o for o in choice.options if o.startswith("tiny: runs:/")]
    assert len(logged) == 1 and logged[0].split("runs:/")[1].split("/")[0] in run_id
    assert f"models:/{REGISTERED}/1" in choice.options

    png = upload_set()[:1]
    at.file_uploader[0].set_value(png)
    at.text_input[0].set_value(f"models:/{REGISTERED}/1")
    at.run()
    assert not at.exception, at.exception
    assert captions(at)[-1].startswith(f"1 of 1 images classified by models:/{REGISTERED}/1")
    # The registered model is tiny's: the same answer as the variant's own model file.
    registered = [m for m in markdown(at) if m.startswith("upload0.png:")]
    at.radio[0].set_value("Trained variant").run()
    at.selectbox[0].set_value("tiny").run()
    assert [m for m in markdown(at) if m.startswith("upload0.png:")] == registered

    at.radio[0].set_value("MLflow model").run()
    at.text_input[0].set_value("runs:/0123456789abcdef/model").run()
    assert not at.exception, at.exception
    assert "cannot load runs:/0123456789abcdef/model" in at.error[0].value
    # A web address is not a model URI (was: `not enough values to unpack`).
    at.text_input[0].set_value("http://127.0.0.1:5000/x").run()
    assert not at.exception, at.exception
    assert [as_shown(e.value) for e in at.error] == [
        "cannot load http://127.0.0.1:5000/x: a web address, not a model URI (a model on a "
        "tracking server is reached with MLFLOW_TRACKING_URI set to the server and its runs:/ or "
        "models:/ URI); expected runs:/<run id>/<variant>, models:/<name>/<version> or a local "
        "folder"
    ]


def test_mistakes_page_filters_by_select_and_by_confusion_cell(in_project: Path):
    at = open_page("mistakes")
    preds = pd.read_csv(in_project / "metrics/tiny/seed0/predictions.csv")
    at.selectbox(key="mistakes_variant").set_value("tiny").run()
    wrong = preds[preds["actual"] != preds["predicted"]]
    assert f"**tiny** gets **{len(wrong)}** of {len(preds)} test images wrong" in markdown(at)[0]
    # The grid: every mistake, most confident first.
    shown = grid_captions(at)
    limit = at.selectbox(key="mistakes_shown").value
    assert limit == 24 and len(wrong) > limit
    expected = wrong.sort_values(["confidence", "index"], ascending=[False, True], kind="stable")
    assert shown == [data.caption(r) for r in expected.head(limit).to_dict("records")]
    assert f"the first {limit} of {len(wrong)}, most confident first" in captions(at)
    confidences = [float(re.search(r"(\d+)%$", c)[1]) for c in shown]
    assert confidences == sorted(confidences, reverse=True)
    counts = at.dataframe[0].value
    assert counts.to_numpy().sum() == len(preds)

    # Filter with the two select boxes: the most common kind of mistake.
    pair = wrong.groupby(["actual", "predicted"]).size().idxmax()
    at.selectbox(key="true_class").set_value(pair[0])
    at.selectbox(key="predicted_class").set_value(pair[1])
    at.run()
    shown = grid_captions(at)
    assert len(shown) == min(limit, int(counts.loc[pair[0], pair[1]]))
    assert all(c.startswith(f"true {pair[0]} · predicted {pair[1]} ") for c in shown)

    # Clicking a confusion-matrix cell sets both filters.
    other = wrong[(wrong["actual"] != pair[0])].iloc[0]
    row = CLASSES.index(other["actual"])
    at.session_state["confusion"] = {"selection": {"cells": [(row, other["predicted"])]}}
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="true_class").value == other["actual"]
    assert at.selectbox(key="predicted_class").value == other["predicted"]
    assert all(
        c.startswith(f"true {other['actual']} · predicted {other['predicted']} ")
        for c in grid_captions(at)
    )
    # A diagonal cell: correct predictions, so no mistakes to show.
    at.session_state["confusion"] = {"selection": {"cells": [(row, other["actual"])]}}
    at.run()
    assert grid_captions(at) == []
    assert "No mistakes with these classes." in [i.value for i in at.info]


def test_compare_page_shows_leaderboard_figures_and_right_wrong_images(in_project: Path):
    at = open_page("compare")
    board = at.dataframe[0].value
    assert board["variant"].tolist() == data.leaderboard_order(Project(in_project))
    # One seed: no std, shown as a dash (Streamlit printed the empty number as "None").
    csv = pd.read_csv(in_project / "reports/leaderboard.csv")
    assert csv["test_accuracy_std"].isna().all()
    assert board["test_accuracy_std"].tolist() == ["–"] * len(board)
    assert board["test_accuracy"].tolist() == pytest.approx((csv["test_accuracy"] * 100).tolist())
    figure_captions = [as_shown(c) for c in at.image[0].captions + at.image[1].captions]
    assert "test accuracy" in figure_captions and "degradation" in figure_captions
    a, b = at.selectbox(key="compare_a").value, at.selectbox(key="compare_b").value
    assert {a, b} == {"tiny", "tiny_plain"}
    pa = pd.read_csv(in_project / f"metrics/{a}/seed0/predictions.csv")
    pb = pd.read_csv(in_project / f"metrics/{b}/seed0/predictions.csv")
    a_only = (pa["actual"] == pa["predicted"]) & (pb["actual"] != pb["predicted"])
    b_only = (pb["actual"] == pb["predicted"]) & (pa["actual"] != pa["predicted"])
    assert a_only.sum() > 0  # the two nets do differ on the tiny test set
    texts = captions(at)
    assert f"{a_only.sum()} test images {a} classifies correctly and {b} does not" in " ".join(
        texts
    )
    assert f"{b_only.sum()} test images {b} classifies correctly and {a} does not" in " ".join(
        texts
    )
    grid = [as_shown(c) for image in at.image[2:] for c in image.captions]
    assert len(grid) == min(24, a_only.sum()) + min(24, b_only.sum())
    assert all(re.fullmatch(rf"true (\w+) · ({a}|{b}) \w+ \d+%", c) for c in grid)


def test_empty_project_says_which_command_makes_what(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    at = open_page()
    assert "`dvc repro train@resnet20-0` trains one" in at.info[0].value
    at.radio[0].set_value("MLflow model").run()
    assert not at.exception, at.exception
    assert "No MLflow model logged yet" in at.info[0].value
    at.switch_page("views/mistakes.py").run()
    assert not at.exception and "No trained model yet in `models/`" in at.info[0].value
    at.switch_page("views/compare.py").run()
    assert not at.exception, at.exception
    infos = " ".join(i.value for i in at.info)
    assert "No leaderboard yet" in infos and "`dvc repro compare` writes it" in infos
    assert "No figures yet" in infos and "Needs two evaluated variants; none so far" in infos


def test_missing_or_broken_files_give_messages_not_crashes(
    app_project: Path, tmp_path: Path, monkeypatch
):
    root = tmp_path / "project"
    shutil.copytree(app_project, root, ignore=shutil.ignore_patterns("prepared"))
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri(root))
    # No prepared data: mistakes and compare say so.
    at = open_page("mistakes")
    assert "No prepared data in `data/prepared/`" in at.warning[0].value
    at.switch_page("views/compare.py").run()
    assert not at.exception and "No prepared data" in at.warning[0].value
    # Only trained, not evaluated: the mistakes page names the evaluate command.
    for variant in ("tiny", "tiny_plain"):
        (root / f"metrics/{variant}/seed0/predictions.csv").unlink()
    at.switch_page("views/mistakes.py").run()
    assert "`dvc repro evaluate@tiny-0` evaluates one" in at.info[0].value
    # A predictions file from before this app, a corrupt model file, no leaderboard.
    (root / "metrics/tiny/seed0/predictions.csv").write_text("actual,predicted\ncat,cat\n")
    (root / "models/tiny/seed0/model.pt").write_bytes(b"not a model")
    (root / "reports/leaderboard.csv").unlink()
    at.switch_page("views/mistakes.py").run()
    assert not at.exception, at.exception
    assert "no column(s) index, confidence" in at.error[0].value
    at.switch_page("views/classify.py").run()
    at.selectbox[0].set_value("tiny")
    at.file_uploader[0].set_value(upload_set()[:1])
    at.run()
    assert not at.exception, at.exception
    assert "cannot load tiny" in at.error[0].value and "not a readable model file" in (
        at.error[0].value
    )


# --- the command ----------------------------------------------------------------------------


def test_app_command_runs_streamlit_on_the_app_script(tmp_path: Path):
    args = build_parser("app").parse_args(
        ["app", "--port", "8777", "--address", "0.0.0.0", "--project", str(tmp_path)]
    )
    assert (args.port, args.address, args.project) == (8777, "0.0.0.0", tmp_path)
    cmd = app_stage.streamlit_command(args.address, args.port)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and Path(cmd[4]) == app_stage.APP_SCRIPT
    assert app_stage.APP_SCRIPT.is_file()
    flags = dict(zip(cmd[5::2], cmd[6::2], strict=True))
    assert flags["--server.port"] == "8777" and flags["--server.address"] == "0.0.0.0"
    assert flags["--server.headless"] == "true"
    assert app_stage.url("0.0.0.0", 8777) == "http://localhost:8777"
    assert app_stage.url("127.0.0.1", 80) == "http://127.0.0.1:80"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "0"], "0 is outside 1..65535"),
        (["--port", "http"], "not an integer: 'http'"),
    ],
)
def test_app_command_rejects_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(["app", *argv])
    assert message in capsys.readouterr().err


def test_app_command_needs_a_project_folder(tmp_path: Path, capsys):
    assert main(["app", "--project", str(tmp_path / "nowhere")]) == 1
    assert "nowhere: no such project folder" in capsys.readouterr().err


START_TIMEOUT_S = 120  # Streamlit's start on a busy, shared 2-core machine
STOP_S = 10  # the app's grace for Streamlit is 5 s (app.STOP_GRACE_S); docker stop allows 10


def _processes(field: str, value: int) -> list[tuple[int, str]]:
    """(pid, start time) of the processes whose parent (`field` "ppid") or process group
    ("pgrp") is `value`, from /proc."""
    index = {"ppid": 1, "pgrp": 2}[field]
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[index]) == value:
                found.append((int(entry.name), fields[19]))
    return found


def _running(pid: int, started: str) -> bool:
    """That process still runs (not gone, not a zombie, its pid not reused)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == started and fields[0] != "Z"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Streamlit's server does
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        s.listen()
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
@pytest.mark.parametrize(
    ("signum", "status"),
    [(signal.SIGTERM, 0), (signal.SIGINT, 130), (signal.SIGKILL, -signal.SIGKILL)],
    ids=["SIGTERM", "SIGINT", "SIGKILL"],
)
def test_a_signal_to_the_app_ends_streamlit_and_frees_the_port(tmp_path: Path, signum, status):
    """kill, systemd, docker stop (SIGTERM) and Ctrl-C (SIGINT) end `resnetlab app` and the
    Streamlit it runs within seconds; killed outright (SIGKILL), the app takes Streamlit with it.
    Was: SIGTERM ended the app and left Streamlit serving on the port."""
    port, log = free_port(), tmp_path / "app.log"
    proc = start_app(tmp_path, port, log)
    streamlit: list[tuple[int, str]] = []
    try:
        wait_for(lambda: healthy(f"http://127.0.0.1:{port}"), START_TIMEOUT_S, "the app", log)
        streamlit = _processes("ppid", proc.pid)
        assert len(streamlit) == 1, streamlit
        ((child, child_started),) = streamlit
        sent = time.monotonic()
        proc.send_signal(signum)
        assert proc.wait(timeout=STOP_S + 5) == status
        # Streamlit ended with it (after SIGKILL: on the parent-death signal).
        wait_for(lambda: not _running(child, child_started), STOP_S, "Streamlit to end", log)
        took = time.monotonic() - sent
        assert took < STOP_S, f"{took:.1f} s"
        for group in (proc.pid, child):  # the app's process group and Streamlit's own
            left = [pid for pid, started in _processes("pgrp", group) if _running(pid, started)]
            assert not left, f"process group {group} still has {left}"
        assert _port_free(port)
        assert "Traceback" not in log.read_text()
    finally:  # whatever failed above: nothing of the app outlives the test
        for pid, started in streamlit:
            if _running(pid, started):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


HOSTILE_NAME = "[x](http://evil)![i](http://evil/i.png).png"


def test_file_names_are_shown_as_text_not_markdown(in_project: Path):
    """A file name that is Markdown for a link and an image shows literally: rendered (CommonMark,
    as Streamlit's Markdown is) it makes no link and no image the browser would load."""
    from markdown_it import MarkdownIt

    at = open_page()
    png = upload_set()[0][1]
    hostile_text = "<img src=http://evil/t.png> www.evil.com `x` **b** _c_ __d__.png"
    at.file_uploader[0].set_value(
        [
            (HOSTILE_NAME, png, "image/png"),
            (hostile_text, b"not an image", "image/png"),
        ]
    )
    at.run()
    assert not at.exception, at.exception
    shown = [m.value for m in at.markdown if "evil" in m.value] + [e.value for e in at.error]
    assert len(shown) == 2, markdown(at)
    md = MarkdownIt("commonmark")
    for source in shown:
        html = md.render(source)
        assert "<a " not in html and "<img" not in html and "<code" not in html, html
        assert "<em>" not in html and "<strong>" not in html.split(": ", 1)[0], html
        assert "evil" in html
    (line, error) = (md.render(s) for s in shown)
    assert line.startswith(f"<p>{HOSTILE_NAME}: <strong>")
    assert error == (
        "<p>&lt;img src=http://evil/t.png&gt; www.evil.com `x` **b** _c_ __d__.png: not an image "
        "(unknown or unsupported format)</p>\n"
    )


def test_class_names_in_captions_and_options_are_text(
    app_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Class names come from `meta.json`: in the image grid's
    captions (Markdown in Streamlit) they show literally; select box options are plain text."""
    from markdown_it import MarkdownIt

    root = tmp_path / "project"
    shutil.copytree(app_project, root, ignore=shutil.ignore_patterns("mlruns", "*.pt"))
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri(root))
    meta_path = root / "data/prepared/meta.json"
    meta = json.loads(meta_path.read_text())
    hostile = [f"![c{i}](http://evil/{i}.png)_{i}_" for i in range(len(meta["classes"]))]
    meta_path.write_text(json.dumps({**meta, "classes": hostile}))
    renamed = dict(zip(meta["classes"], hostile, strict=True))
    for path in (root / "metrics").glob("*/seed*/predictions.csv"):  # as evaluate writes them
        frame = pd.read_csv(path)
        frame[["actual", "predicted"]] = frame[["actual", "predicted"]].replace(renamed)
        frame.to_csv(path, index=False)
    at = open_page("mistakes")
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox[1].options[1:] == hostile  # shown as given: options are not Markdown
    shown = grid_captions(at, source=True)
    assert shown
    md = MarkdownIt("commonmark")
    for caption in shown:
        html = md.render(caption)
        assert "<img" not in html and "<a " not in html and "<em>" not in html, html
        assert "![c" in html


def test_the_leaderboard_shows_a_std_over_seeds_and_a_dash_for_one_seed():
    from resnetlab.webapp.views.compare import leaderboard_table

    board = pd.DataFrame(
        {"variant": ["a", "b"], "test_accuracy": [0.9, 0.8], "test_accuracy_std": [0.0123, np.nan]}
    )
    shown, config = leaderboard_table(board)
    assert shown["test_accuracy"].tolist() == pytest.approx([90.0, 80.0])
    assert shown["test_accuracy_std"].tolist() == ["1.23%", "–"]
    assert set(config) == {"test_accuracy", "test_accuracy_std"}
