"""The docs read as a site and every link in them, and in the README, leads somewhere."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO


def test_the_manual_builds_as_a_site_in_strict_mode(tmp_path: Path) -> None:
    # mkdocs.yml says strict: a link to a page that is not there, or a page left out of a
    # broken nav, fails the build.
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "image" / "index.html").is_file()


def test_every_link_in_the_readme_resolves() -> None:
    readme = (REPO / "README.md").read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", readme, re.M)}
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", readme):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        if (path and not (REPO / path).exists()) or (not path and anchor not in anchors):
            broken.append(target)
    assert not broken, f"README.md links to what is not there: {broken}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
