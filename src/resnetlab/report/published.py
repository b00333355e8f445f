"""Measured vs published: each variant's mean ± std over seeds against the number its source
publishes, and claims (one variant's number above another's) checked from the measurements.

The published numbers and their citations live in one data file (``published.yaml``, read by
:mod:`resnetlab.report.published_file`), never in code. Numbers are percentages there and here.
The compare stage takes the numbers of the dataset the prepared data was made from; a dataset
the file gives no numbers for gets an empty comparison, and the report says so.

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
from typing import TYPE_CHECKING

from resnetlab.data.datasets import DATASETS
from resnetlab.report.published_file import (
    METRICS,
    Claim,
    Published,
    PublishedNumbers,
)
from resnetlab.report.stats import mean_std

if TYPE_CHECKING:
    import pandas as pd

PUBLISHED_MD = "published_vs_measured.md"
PUBLISHED_CSV = "published_vs_measured.csv"

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
    published: PublishedNumbers,
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
    published: PublishedNumbers, runs: pd.DataFrame, finals: Mapping[str, Sequence[float]]
) -> list[ClaimCheck]:
    """Each claim of the dataset, checked from our runs (see the module docstring)."""
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


def dataset_name(key: str) -> str:
    """`key` as people read it: "CIFAR-100 (`cifar100`)"; an unknown key as itself."""
    dataset = DATASETS.get(key)
    return f"{dataset.name} (`{key}`)" if dataset is not None else f"`{key}`"


def no_numbers_line(key: str) -> str:
    """The report's one line for a dataset the file gives no published numbers or claims."""
    return (
        f"No published numbers exist for {dataset_name(key)} in published.yaml: nothing to compare."
    )


def report_markdown(
    table: pd.DataFrame, claims: Sequence[ClaimCheck], numbers: PublishedNumbers | None = None
) -> str:
    """The report as Markdown: the dataset `numbers` are for (when given), the table of
    published numbers, then the claims; for a dataset without published numbers, one line
    saying so."""
    lines = ["# Published vs measured", ""]
    if numbers is not None and numbers.empty:
        return "\n".join([*lines, no_numbers_line(numbers.dataset)]) + "\n"
    lines += [
        "Percentages; ours is the mean ± sample std over n training seeds. A verdict of "
        "reproduced means within 2 standard errors of our mean or within the published ± band.",
        "",
    ]
    if numbers is not None:
        lines += [f"Dataset: {dataset_name(numbers.dataset)}.", ""]
    lines += [
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


def write_report(
    table: pd.DataFrame,
    claims: Sequence[ClaimCheck],
    out_dir: Path,
    numbers: PublishedNumbers | None = None,
) -> list[Path]:
    """`published_vs_measured.{csv,md}` under `out_dir`; the CSV also lists the claims (as rows
    with `variant` = "claim: <name>"). `numbers`, the dataset's published numbers the table and
    claims come from, names the dataset in the Markdown. Both files are written even for a
    dataset without published numbers (the CSV then holds only its header). Returns the
    paths."""
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
    md.write_text(report_markdown(table, claims, numbers))
    return [csv, md]
