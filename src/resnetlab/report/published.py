"""Measured vs published: each variant's mean ± std over seeds against the number its source
publishes, and claims (one variant's number above another's) checked from the measurements.

The published numbers and their citations live in one data file (``published.yaml``, read by
:func:`load_published`), never in code. Numbers are percentages there and here.

Verdicts for a published number ``p`` (with its own ± band ``b`` where given) against our mean
``m`` with sample std ``s`` over ``n`` seeds (standard error ``s / sqrt(n)``):

* ``not comparable``: our run's budget differs from the source's (epochs, training images: the
  data subset or the validation hold-out) or the data file notes another difference; the verdict
  says how;
* ``reproduced``: ``|m - p| <= 2 s / sqrt(n)`` (n >= 2), or ``|m - p| <= b``;
* ``better`` / ``worse``: otherwise, by the direction of the metric (lower error is better).

A claim "``higher``'s metric is above ``lower``'s" holds when the difference of the means is
above two standard errors of that difference (Welch: ``sqrt(s1²/n1 + s2²/n2)``), is contradicted
when it is below minus that, and is inconclusive in between; with a single seed on either side
the spread is unknown, so the verdict names the sign only, marked ``(n = 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from resnetlab.core.errors import ResnetlabError
from resnetlab.report.stats import mean_std

if TYPE_CHECKING:
    import pandas as pd

PUBLISHED_MD = "published_vs_measured.md"
PUBLISHED_CSV = "published_vs_measured.csv"

# Metrics a published number or a claim may name: (leaderboard/run column, higher is better).
# `final_train_error` is the training error of a run's last epoch (He et al.'s Fig. 6 curves).
METRICS = {
    "test_error": ("test_error", False),
    "test_accuracy": ("test_accuracy", True),
    "final_train_error": ("final_train_error", False),
}

REPORT_COLUMNS = (
    "variant",
    "source",
    "where",
    "metric",
    "published",
    "published_pm",
    "measured_mean",
    "measured_std",
    "n",
    "difference",
    "verdict",
)


class PublishedError(ResnetlabError):
    """The published-numbers file is missing or malformed; the message names the entry."""


@dataclass(frozen=True)
class Published:
    variant: str
    source: str  # a key of `sources`
    where: str  # table or figure in the source
    metric: str  # a key of METRICS
    value: float  # percent
    pm: float | None  # the source's own ± (percent), where given
    epochs: int | None  # the source's training budget
    train_images: int | None
    differs: str | None  # a known difference besides the budget (architecture, protocol)


@dataclass(frozen=True)
class Claim:
    name: str
    statement: str
    source: str
    where: str
    metric: str
    higher: str  # the variant whose metric the claim says is higher
    lower: str


@dataclass(frozen=True)
class PublishedFile:
    sources: Mapping[str, str]  # key -> full citation
    results: tuple[Published, ...]
    claims: tuple[Claim, ...]


def _field(entry: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    value = entry.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise PublishedError(f"{where}.{key}: {value!r} is not allowed; expected {kind}")
    return value


def load_published(path: Path) -> PublishedFile:
    """Read and check the published-numbers file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise PublishedError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PublishedError(f"{path}: not readable YAML ({exc})") from None
    if not isinstance(raw, Mapping):
        raise PublishedError(f"{path}: expected a mapping with sources, results, claims")
    sources = raw.get("sources") or {}
    if not isinstance(sources, Mapping):
        raise PublishedError(f"{path}: sources: expected a mapping of key -> citation")
    sources = {str(k): _field(v, "cite", f"sources.{k}", str) for k, v in sources.items()}

    def source_of(entry: Mapping[str, Any], where: str) -> str:
        key = _field(entry, "source", where, str)
        if key not in sources:
            raise PublishedError(f"{where}.source: {key!r} is not a key of sources")
        return key

    def metric_of(entry: Mapping[str, Any], where: str) -> str:
        metric = _field(entry, "metric", where, str)
        if metric not in METRICS:
            raise PublishedError(f"{where}.metric: {metric!r}; expected {', '.join(METRICS)}")
        return metric

    results = []
    for i, entry in enumerate(raw.get("results") or []):
        where = f"{path.name}: results[{i}]"
        if not isinstance(entry, Mapping):
            raise PublishedError(f"{where}: expected a mapping")
        pm = entry.get("pm")
        results.append(
            Published(
                variant=_field(entry, "variant", where, str),
                source=source_of(entry, where),
                where=str(entry.get("where", "")),
                metric=metric_of(entry, where),
                value=float(_field(entry, "value", where, (int, float))),
                pm=None if pm is None else float(_field(entry, "pm", where, (int, float))),
                epochs=entry.get("epochs"),
                train_images=entry.get("train_images"),
                differs=entry.get("differs"),
            )
        )
    claims = []
    for i, entry in enumerate(raw.get("claims") or []):
        where = f"{path.name}: claims[{i}]"
        if not isinstance(entry, Mapping):
            raise PublishedError(f"{where}: expected a mapping")
        claims.append(
            Claim(
                name=_field(entry, "name", where, str),
                statement=_field(entry, "statement", where, str),
                source=source_of(entry, where),
                where=str(entry.get("where", "")),
                metric=metric_of(entry, where),
                higher=_field(entry, "higher", where, str),
                lower=_field(entry, "lower", where, str),
            )
        )
    return PublishedFile(sources, tuple(results), tuple(claims))


def final_train_errors(histories: Mapping[str, Mapping[int, pd.DataFrame]]) -> dict[str, list]:
    """variant -> the training error (fraction) of each seed's last epoch."""
    return {
        v: [float(1.0 - h["train_accuracy"].iloc[-1]) for h in by_seed.values()]
        for v, by_seed in histories.items()
    }


def _values(runs: pd.DataFrame, finals: Mapping[str, Sequence[float]], variant: str, metric: str):
    """Our per-seed values of `metric` for `variant`, in percent (empty when not measured)."""
    if metric == "final_train_error":
        return [100.0 * x for x in finals.get(variant, [])]
    column = METRICS[metric][0]
    return [100.0 * float(x) for x in runs.loc[runs["variant"] == variant, column]]


def _budget_differences(
    entry: Published, epochs: int | None, train_images: int, subset: int
) -> list[str]:
    how = []
    if entry.epochs is not None and epochs is not None and epochs != entry.epochs:
        how.append(f"{epochs} epochs, source {entry.epochs}")
    if subset:
        how.append(f"trained on a {subset}-image subset")
    elif entry.train_images is not None and train_images != entry.train_images:
        how.append(f"{train_images} training images, source {entry.train_images}")
    if entry.differs:
        how.append(str(entry.differs))
    return how


def compare_published(
    published: PublishedFile,
    runs: pd.DataFrame,
    finals: Mapping[str, Sequence[float]],
    train_images: int,
    subset: int,
) -> pd.DataFrame:
    """One row per published number whose variant we measured: columns :data:`REPORT_COLUMNS`
    (percent; `difference` = ours - published)."""
    import pandas as pd

    rows = []
    for entry in published.results:
        values = _values(runs, finals, entry.variant, entry.metric)
        if not values:
            continue
        mean, std, n = mean_std(values)
        epochs_run = runs.loc[runs["variant"] == entry.variant, "epochs"]
        epochs = int(epochs_run.iloc[0]) if len(epochs_run) else None
        diff = mean - entry.value
        how = _budget_differences(entry, epochs, train_images, subset)
        if how:
            verdict = "not comparable: " + "; ".join(how)
        else:
            se = std / math.sqrt(n) if n > 1 else math.nan
            within_se = math.isfinite(se) and abs(diff) <= 2.0 * se
            within_band = entry.pm is not None and abs(diff) <= entry.pm
            if within_se or within_band:
                verdict = "reproduced"
            else:
                higher_better = METRICS[entry.metric][1]
                verdict = "better" if (diff > 0) == higher_better else "worse"
        rows.append(
            {
                "variant": entry.variant,
                "source": published.sources[entry.source],
                "where": entry.where,
                "metric": entry.metric,
                "published": entry.value,
                "published_pm": entry.pm,
                "measured_mean": mean,
                "measured_std": std,
                "n": n,
                "difference": diff,
                "verdict": verdict,
            }
        )
    return pd.DataFrame(rows, columns=list(REPORT_COLUMNS))


@dataclass(frozen=True)
class ClaimCheck:
    claim: Claim
    verdict: str
    detail: str
    cite: str  # the claim's source, as cited


def check_claims(
    published: PublishedFile, runs: pd.DataFrame, finals: Mapping[str, Sequence[float]]
) -> list[ClaimCheck]:
    """Each claim of the file, checked from our runs (see the module docstring)."""
    checks = []
    for claim in published.claims:
        cite = published.sources[claim.source]
        hi = _values(runs, finals, claim.higher, claim.metric)
        lo = _values(runs, finals, claim.lower, claim.metric)
        if not hi or not lo:
            missing = [v for v, vals in ((claim.higher, hi), (claim.lower, lo)) if not vals]
            detail = f"not measured: {', '.join(missing)}"
            checks.append(ClaimCheck(claim, "not checked", detail, cite))
            continue
        (m1, s1, n1), (m2, s2, n2) = mean_std(hi), mean_std(lo)
        diff = m1 - m2
        detail = (
            f"{claim.higher} {_pm(m1, s1, n1)}, {claim.lower} {_pm(m2, s2, n2)}; "
            f"difference {diff:+.2f} points"
        )
        if n1 < 2 or n2 < 2:
            verdict = ("holds" if diff > 0 else "contradicted") + " (n = 1)"
        else:
            se = math.sqrt(s1**2 / n1 + s2**2 / n2)
            detail += f" (2 standard errors: {2 * se:.2f})"
            if diff > 2 * se:
                verdict = "holds"
            elif diff < -2 * se:
                verdict = "contradicted"
            else:
                verdict = "inconclusive"
        checks.append(ClaimCheck(claim, verdict, detail, cite))
    return checks


def _pm(mean: float, std: float, n: int) -> str:
    if n < 2 or not math.isfinite(std):
        return f"{mean:.2f}% (n = {n})"
    return f"{mean:.2f} ± {std:.2f}% (n = {n})"


def report_markdown(table: pd.DataFrame, claims: Sequence[ClaimCheck]) -> str:
    """The report as Markdown: the table of published numbers, then the claims."""
    lines = [
        "# Published vs measured",
        "",
        "Percentages; ours is the mean ± sample std over n training seeds. A verdict of "
        "reproduced means within 2 standard errors of our mean or within the published ± band.",
        "",
        "| variant | metric | published | measured | difference | verdict | source |",
        "|:---|:---|---:|---:|---:|:---|:---|",
    ]
    for row in table.to_dict("records"):
        pm = row["published_pm"]
        published = f"{row['published']:.2f}" + (
            f" ± {pm:.2f}" if pm is not None and math.isfinite(pm) else ""
        )
        measured = _pm(row["measured_mean"], row["measured_std"], int(row["n"]))
        where = f", {row['where']}" if row["where"] else ""
        lines.append(
            f"| {row['variant']} | {row['metric']} | {published} | {measured} | "
            f"{row['difference']:+.2f} | {row['verdict']} | {row['source']}{where} |"
        )
    if table.empty:
        lines.append("| (no variant with a published number was measured) | | | | | | |")
    lines += ["", "## Claims", ""]
    for check in claims:
        where = f", {check.claim.where}" if check.claim.where else ""
        lines.append(
            f"- **{check.claim.statement}** ({check.cite}{where}): "
            f"**{check.verdict}**. {check.detail}."
        )
    if not claims:
        lines.append("- (none)")
    return "\n".join(lines) + "\n"


def write_report(table: pd.DataFrame, claims: Sequence[ClaimCheck], out_dir: Path) -> list[Path]:
    """`published_vs_measured.{csv,md}` under `out_dir`; the CSV also lists the claims (as rows
    with `variant` = "claim: <name>"). Returns the paths."""
    import pandas as pd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    claim_rows = pd.DataFrame(
        [
            {
                "variant": f"claim: {c.claim.name}",
                "source": c.cite,
                "where": c.claim.where,
                "metric": c.claim.metric,
                "verdict": c.verdict,
            }
            for c in claims
        ],
        columns=list(REPORT_COLUMNS),
    )
    frames = [f for f in (table, claim_rows) if not f.empty]
    full = pd.concat(frames, ignore_index=True) if frames else table
    csv, md = out_dir / PUBLISHED_CSV, out_dir / PUBLISHED_MD
    full.to_csv(csv, index=False, float_format="%.4g")
    md.write_text(report_markdown(table, claims))
    return [csv, md]
