"""The documentation site builds: `mkdocs build --strict` fails on a broken link or anchor, a
page missing from the nav's files, a warning of the theme, or a study record under `results/`
that no page shows (the hook `docs/hooks/records.py` renders the records into the results page).
The architecture page names exactly the output-neutral modules of `tests/test_dvc_deps.py`. The
docs' shell commands are checked by `tests/test_readme.py`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_mkdocs_build_is_strictly_clean(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The parameter reference, rendered from the code at build time: a row for every key.
    from resnetlab.core.reference import MEANINGS

    params_page = (site / "params" / "index.html").read_text()
    assert "params-reference" not in params_page
    assert all(f"<td><code>{key}</code></td>" in params_page for key in MEANINGS)
    # The results page holds the records' tables, rendered at build time, and their figures.
    results = (site / "results" / "index.html").read_text()
    assert "<!-- record:" not in results, "a record marker was left unrendered"
    for record in sorted((REPO / "results").glob("*/machine.json")):
        name = record.parent.name
        assert f"results/{name}/" in results
        for png in (record.parent / "figures").glob("*.png"):
            assert (site / "studies" / name / png.name).is_file()


def test_architecture_names_exactly_the_output_neutral_modules():
    # OUTPUT_NEUTRAL (tests/test_dvc_deps.py) is the one list; the page names the same modules.
    from test_dvc_deps import output_neutral_as_named

    page = (REPO / "docs" / "architecture.md").read_text()
    section = page.split("\n## Output-neutral modules\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z_]+(?:/[a-z_]+)*(?:\.py|/))`", section))
    named -= {"tests/test_dvc_deps.py"}
    assert named == output_neutral_as_named()
    assert "`__init__` files, which hold docstrings only" in " ".join(section.split())


def test_every_test_the_docs_name_exists():
    """The reliability page points each guarantee at its test: a renamed or deleted test would
    leave a guarantee that nothing holds the project to."""
    named = set()
    for page in sorted((REPO / "docs").rglob("*.md")):
        named |= {
            (page.name, *m) for m in re.findall(r"tests/(\w+\.py)(?:::(\w+))?", page.read_text())
        }
    assert len(named) > 30
    missing = []
    for page, module, function in sorted(named):
        path = REPO / "tests" / module
        if not path.is_file():
            missing.append(f"{page}: tests/{module}")
        elif function and not re.search(rf"^def {function}\(", path.read_text(), re.M):
            missing.append(f"{page}: tests/{module}::{function}")
    assert not missing, missing
