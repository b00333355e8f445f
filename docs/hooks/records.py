"""MkDocs hook: the study records under `results/` rendered into the docs at build time.

`bench/record_study.py` writes one folder per study (`results/<study>/`): `machine.json`,
`stage_times.csv`, the compare stage's `leaderboard.csv`, `curves.csv` and
`published_vs_measured.csv`, the figures, and a README stating the command and its wall-clock. A
page asks for a record with the marker `<!-- record: <study> -->` on a line of its own; the hook
replaces it with the record's tables (machine, results per variant, verdicts, wall-clock per
stage) and its figures, which it copies into the site under `studies/<study>/`. Nothing is
retyped, so a new record shows up by adding one marker. A marker naming no record, or a record no
page shows, stops `mkdocs build --strict`.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path
from typing import Any

import yaml
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.records")

MARKER = re.compile(r"^<!-- record: ([A-Za-z0-9_.-]+) -->$", re.M)
_shown: set[str] = set()


def _root(config: Any) -> Path:
    return Path(config.config_file_path).resolve().parent


def _records(config: Any) -> dict[str, Path]:
    """Every study record: the folders under results/ that hold a machine.json."""
    results = _root(config) / "results"
    return {p.parent.name: p.parent for p in sorted(results.glob("*/machine.json"))}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _num(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def _pct(mean: str | None, std: str | None = None) -> str:
    m = _num(mean)
    if m is None:
        return ""
    s = _num(std)
    return f"{100 * m:.2f}%" + (f" ± {100 * s:.2f}%" if s is not None else "")


def _duration(seconds: str | float) -> str:
    s = round(float(seconds))
    return f"{s // 60} min {s % 60:02d} s"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    align = ["---:" if i in right else ":---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _last_epochs(folder: Path) -> dict[str, dict[str, str]]:
    """Per variant, the last epoch's row of its mean training curve (curves.csv)."""
    last: dict[str, dict[str, str]] = {}
    for row in _rows(folder / "curves.csv"):
        if row["variant"] not in last or int(row["epoch"]) > int(last[row["variant"]]["epoch"]):
            last[row["variant"]] = row
    return last


def _final_train_error(folder: Path) -> dict[str, str]:
    """Per variant, 1 - the training accuracy of its last epoch (± its std over seeds)."""
    out = {}
    for variant, row in _last_epochs(folder).items():
        acc = _num(row["train_accuracy"])
        out[variant] = _pct(str(1 - acc), row.get("train_accuracy_std")) if acc is not None else ""
    return out


def _claims(config: Any) -> dict[str, dict[str, str]]:
    """published.yaml's claims by name, every dataset's (`claims: {<dataset>: [...]}`):
    statement, metric, and the variants `higher`/`lower`."""
    published = yaml.safe_load((_root(config) / "published.yaml").read_text())
    by_dataset = published.get("claims") or {}
    return {c["name"]: c for claims in by_dataset.values() for c in claims or []}


def _final_train_errors(folder: Path) -> dict[str, float]:
    """Per variant, the final training error of its mean curve, as a fraction."""
    last = _last_epochs(folder)
    return {v: 1 - float(r["train_accuracy"]) for v, r in last.items() if r["train_accuracy"]}


def _difference(claim: dict[str, str], board: dict[str, dict[str, str]], folder: Path) -> str:
    """The claim's `higher` minus `lower` variant, in points of its metric, when both ran."""
    if claim.get("metric") == "final_train_error":
        values = _final_train_errors(folder)
    elif claim.get("metric") in ("test_error", "test_accuracy"):
        values = {v: float(r[claim["metric"]]) for v, r in board.items()}
    else:
        return ""
    higher, lower = values.get(claim.get("higher", "")), values.get(claim.get("lower", ""))
    if higher is None or lower is None:
        return ""
    return f"{100 * (higher - lower):+.2f}"


def render(folder: Path, config: Any) -> str:
    machine = json.loads((folder / "machine.json").read_text())
    readme = (folder / "README.md").read_text()
    total = re.search(r"\*\*Wall-clock of the command:\*\* (.+)", readme)
    if not total:
        raise PluginError(f"{folder / 'README.md'}: no 'Wall-clock of the command' line")
    gpu = machine.get("gpu") or "none"
    bf16 = "native" if machine.get("native_bf16_cpu") else "not native"
    dirty = machine.get("uncommitted_changes")
    edits = " with uncommitted edits (`workspace.diff`)" if dirty else ""
    parts = [
        f"Recorded by `bench/record_study.py` in `results/{folder.name}/`. **Machine:** "
        f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB of memory, "
        f"GPU: {gpu}, bf16 on the CPU: {bf16}; torch {machine['torch']}, Python "
        f"{machine['python']}. **Code:** commit `{machine['commit'][:12]}`{edits}, finished "
        f"{machine['finished_utc']}. **Wall-clock of the command:** {total[1].strip()}."
    ]

    train_error = _final_train_error(folder)
    board = {r["variant"]: r for r in _rows(folder / "leaderboard.csv")}
    rows = [
        [
            f"`{r['variant']}`",
            r["epochs"],
            r["n"],
            _pct(r["best_val_accuracy"], r.get("best_val_accuracy_std")),
            _pct(r["test_accuracy"], r.get("test_accuracy_std")),
            _pct(r["test_error"], r.get("test_error_std")),
            train_error.get(r["variant"], ""),
            _duration(r["train_time_s"]),
            f"{float(r['images_per_s']):.0f}",
        ]
        for r in board.values()
    ]
    header = ["variant", "epochs", "seeds", "best val accuracy", "test accuracy", "test error"]
    header += ["final training error", "train time", "images/s"]
    parts.append(_table(header, rows, right=set(range(1, 9))))

    known = _claims(config)
    measured, claims = [], []
    for r in _rows(folder / "published_vs_measured.csv"):
        source = r["source"] + (f", {r['where']}" if r["where"] else "")
        if r["variant"].startswith("claim: "):
            name = r["variant"].removeprefix("claim: ")
            claim = known.get(name, {})
            statement = claim.get("statement", name)
            difference = _difference(claim, board, folder)
            claims.append([statement, difference, f"**{r['verdict']}**", source])
        else:
            std = _num(r["measured_std"])
            value = f"{float(r['measured_mean']):.2f}" + (f" ± {std:.2f}" if std else "")
            row = [f"`{r['variant']}`", r["metric"], r["published"], f"{value} (n = {r['n']})"]
            measured.append([*row, r["verdict"], source])
    if measured:
        header = ["variant", "metric (%)", "published", "measured", "verdict", "source"]
        parts.append(_table(header, measured, right={2, 3}))
    if claims:
        header = ["claim", "higher - lower (points)", "verdict", "source"]
        parts.append(_table(header, claims, right={1}))

    stages = [
        [f"`{r['stage']}`", _duration(r["seconds"])] for r in _rows(folder / "stage_times.csv")
    ]
    parts.append(_table(["stage", "wall-clock"], stages, right={1}))

    for png in sorted((folder / "figures").glob("*.png")):
        parts.append(f"![{folder.name}: {png.stem}](studies/{folder.name}/{png.name})")
    return "\n\n".join(parts)


def on_files(files: Any, config: Any) -> Any:
    for name, folder in _records(config).items():
        for png in sorted((folder / "figures").glob("*.png")):
            uri = f"studies/{name}/{png.name}"
            files.append(File.generated(config, uri, abs_src_path=str(png)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    records = _records(config)

    def replace(match: re.Match[str]) -> str:
        name = match[1]
        if name not in records:
            raise PluginError(f"{page.file.src_uri}: no study record results/{name}/")
        _shown.add(name)
        return render(records[name], config)

    return MARKER.sub(replace, markdown)


def on_post_build(config: Any) -> None:
    for name in sorted(set(_records(config)) - _shown):
        log.warning("results/%s/: a study record no page shows (<!-- record: %s -->)", name, name)
    _shown.clear()
