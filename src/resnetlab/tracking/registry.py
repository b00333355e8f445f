"""What a registered model version says about itself in MLflow's Models page: a description and
tags naming the variant, seed, recipe, data, DVC experiment and commit it came from and its
accuracy, and the `best` alias on the version with the highest validation accuracy.

Versions of `resnetlab-<variant>` otherwise differ only by a timestamp. The alias is chosen on
validation accuracy, never on test accuracy (the test set only reports), and is an alias, not a
stage: MLflow deprecated stages in 2.9. Test accuracy is added to a version by the evaluate
stage, as a tag and a line of the description.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from resnetlab.tracking.store import quote

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

BEST_ALIAS = "best"  # models:/resnetlab-<variant>@best
VAL_TAG = "best_val_accuracy"
TEST_TAG = "test_accuracy"
_TEST_LINE = "test accuracy "


@dataclass(frozen=True)
class VersionFacts:
    """A version's description (Markdown, one fact a line) and tags, from its training run."""

    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)


def facts(
    variant: str,
    run_tags: Mapping[str, str],
    run_description: str,
    best_val_accuracy: float,
    best_epoch: int,
) -> VersionFacts:
    """The facts of a version trained by a run with `run_tags` (seed, DVC experiment, commit)
    and `run_description` (model, recipe source, data: `run_context.describe_run`)."""
    seed = run_tags.get("seed", "")
    tags = {
        "variant": variant,
        VAL_TAG: f"{best_val_accuracy:.4f}",
        "best_epoch": str(best_epoch),
    }
    for key in ("seed", "dvc_exp_name", "git_commit"):
        if run_tags.get(key):
            tags[key] = run_tags[key]
    lines = [
        f"{variant}, seed {seed}: best val accuracy {best_val_accuracy:.2%} (epoch {best_epoch})"
    ]
    if run_description:
        lines.append(run_description)
    origin = []
    if run_tags.get("dvc_exp_name"):
        origin.append(f"DVC experiment {run_tags['dvc_exp_name']}")
    if run_tags.get("git_commit"):
        origin.append(f"commit {run_tags['git_commit'][:12]}")
    if origin:
        lines.append(", ".join(origin))
    return VersionFacts("  \n".join(lines), tags)  # two spaces: a Markdown line break


def point_best_alias(c: MlflowClient, registered: str) -> str | None:
    """Set `registered`@best to its version with the highest validation accuracy (the newest of
    equals); returns that version, None if no version records one."""
    ranked = []
    for version in c.search_model_versions(f"name = '{quote(registered)}'"):
        try:
            ranked.append((float(version.tags[VAL_TAG]), int(version.version)))
        except (KeyError, ValueError):
            continue  # registered before versions recorded it
    if not ranked:
        return None
    best = str(max(ranked)[1])
    c.set_registered_model_alias(registered, BEST_ALIAS, best)
    return best


def add_test_accuracy(c: MlflowClient, run_id: str, test_accuracy: float) -> None:
    """Record the evaluate stage's test accuracy on the versions run `run_id` registered: a tag,
    and the description's last line (replaced when evaluate runs again)."""
    for version in c.search_model_versions(f"run_id = '{quote(run_id)}'"):
        c.set_model_version_tag(version.name, version.version, TEST_TAG, f"{test_accuracy:.4f}")
        kept = [
            line
            for line in (version.description or "").split("  \n")
            if line and not line.startswith(_TEST_LINE)
        ]
        kept.append(f"{_TEST_LINE}{test_accuracy:.2%} (evaluate stage)")
        c.update_model_version(version.name, version.version, description="  \n".join(kept))
