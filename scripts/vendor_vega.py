"""Write `.dvc/plots/offline.html`: the page `dvc plots show` fills, with the charting libraries
inside it, so every chart renders with no network (DVC's own page loads them from a CDN).

The libraries are the versions DVC's Vega-Lite templates are written for (`dvc_render.vega`),
fetched with `npm pack` from the npm registry and checked against the integrity the registry
published for them (pinned below). Run it to move to other versions:

    python scripts/vendor_vega.py

`.dvc/config` points DVC at the page (`plots.html_template`); `tests/test_webapp_browser.py`
renders `dvc plots show`'s output in Chromium with the network off.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / ".dvc" / "plots" / "offline.html"

# package, version, npm's dist.integrity; order matters: vega-embed needs the other two.
PACKAGES = (
    (
        "vega",
        "5.20.2",
        "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw==",
    ),
    (
        "vega-lite",
        "5.2.0",
        "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw==",
    ),
    (
        "vega-embed",
        "6.18.2",
        "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg==",
    ),
)

# DVC replaces {plot_divs} and {refresh_tag}; leaving out {scripts} keeps its CDN tags out.
HEAD = """<!DOCTYPE html>
<!-- Written by scripts/vendor_vega.py: {versions}, each under its LICENSE (BSD-3-Clause),
     copied below. Edit the script, not this file. -->
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC plots</title>
    <style>table {{ border-spacing: 15px; }}</style>
"""
TAIL = """</head>
<body>
    {plot_divs}
</body>
</html>
"""


def fetch(name: str, version: str, integrity: str, into: Path) -> tuple[str, str]:
    """The minified browser build and the LICENSE of `name`@`version`, checked."""
    subprocess.run(
        ["npm", "pack", "--silent", f"{name}@{version}"], cwd=into, check=True, capture_output=True
    )
    archive = into / f"{name}-{version}.tgz"
    algorithm, expected = integrity.split("-", 1)
    actual = base64.b64encode(hashlib.new(algorithm, archive.read_bytes()).digest()).decode()
    if actual != expected:
        raise SystemExit(f"{archive.name}: integrity {actual}, the registry published {expected}")
    with tarfile.open(archive) as tar:
        script = tar.extractfile(f"package/build/{name}.min.js")
        license_ = tar.extractfile("package/LICENSE")
        assert script is not None and license_ is not None
        return script.read().decode(), license_.read().decode()


def page(parts: list[tuple[str, str, str, str]]) -> str:
    versions = ", ".join(f"{name} {version}" for name, version, _, _ in parts)
    out = [HEAD.format(versions=versions)]
    for name, version, script, license_ in parts:
        # Nothing in the builds may end the script element or look like a DVC placeholder.
        for bad in ("</script", "{plot_divs}", "{refresh_tag}", "{scripts}"):
            if bad in script:
                raise SystemExit(f"{name} {version}: its build contains {bad!r}")
        out.append(f"<!-- {name} {version}\n{license_.replace('--', '- -')}-->\n")
        out.append(f"<script>\n{script}\n</script>\n")
    out.append(TAIL)
    return "".join(out)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        parts = [(n, v, *fetch(n, v, i, Path(tmp))) for n, v, i in PACKAGES]
    PAGE.write_text(page(parts))
    print(f"wrote {PAGE.relative_to(REPO)} ({PAGE.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
