"""Write the extension's repository, branch and contributors into every file that names them, from one value each.

    python scripts/extension_metadata.py --repository OWNER/NAME [--branch BRANCH] [--contributors "A (Org), ..."]
    python scripts/extension_metadata.py --check      # exit status 1 when the files disagree (run by the tests)

Every URL of the extension derives from ``--repository`` and ``--branch``: the homepage, the icon and screenshot
(raw) URLs in ``CMakeLists.txt``, ``scm_url``/``scm_revision`` of ``CLDL.json``, the legacy ``CLDL.s4ext`` and the
modules' documentation link (``CLDLSegmentationLib/extension.py``). The ``set(EXTENSION_*URL* "...")`` lines stay
literal strings because the ExtensionsIndex checker reads them with a regular expression and fetches the URLs
(``scripts/check_description_files.py``, ``check_cmakelists_content``): a ``${VARIABLE}`` there would not be
expanded. Without options the current values (read from ``CLDL.json`` and ``extension.py``) are written again.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CMAKE = ROOT / "CMakeLists.txt"
CATALOG = ROOT / "CLDL.json"
S4EXT = ROOT / "CLDL.s4ext"
PYTHON = ROOT / "CLDLSegmentation" / "CLDLSegmentationLib" / "extension.py"
#: Files of this repository shown in the Extensions Manager, as paths from its root.
ICON = "CLDL.png"
SCREENSHOTS = ("docs/slicer_view.png",)


def current() -> tuple[str, str, str]:
    """The repository (OWNER/NAME), branch and contributors the files hold now."""
    catalog = json.loads(CATALOG.read_text())
    repository = catalog["scm_url"].removeprefix("https://github.com/").rstrip("/")
    contributors = re.search(r'^CONTRIBUTORS = "([^"]*)"$', PYTHON.read_text(), re.MULTILINE).group(1)
    return repository, catalog["scm_revision"], contributors


def rendered(repository: str, branch: str, contributors: str) -> dict[Path, str]:
    """Every file with the values written in."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repository):
        raise SystemExit(f"extension_metadata: error: --repository must be OWNER/NAME, got {repository!r}")
    if '"' in contributors or "\n" in contributors:
        raise SystemExit("extension_metadata: error: --contributors must be one line without double quotes")
    github = f"https://github.com/{repository}"
    raw = f"https://raw.githubusercontent.com/{repository}/{branch}"
    values = {
        "EXTENSION_HOMEPAGE": f"{github}#3d-slicer",
        "EXTENSION_CONTRIBUTORS": contributors,
        "EXTENSION_ICONURL": f"{raw}/{ICON}",
        "EXTENSION_SCREENSHOTURLS": " ".join(f"{raw}/{s}" for s in SCREENSHOTS),
    }
    cmake = CMAKE.read_text()
    for name, value in values.items():
        cmake, count = re.subn(rf'^set\({name} "[^"]*"\)', f'set({name} "{value}")', cmake, flags=re.MULTILINE)
        if count != 1:
            raise SystemExit(f'extension_metadata: error: CMakeLists.txt has no single set({name} "...") line')
    catalog = json.loads(CATALOG.read_text())
    catalog.update(scm_url=github, scm_revision=branch)
    s4ext = S4EXT.read_text()
    for key, value in {
        "scmurl": f"{github}.git",
        "scmrevision": branch,
        "homepage": values["EXTENSION_HOMEPAGE"],
        "contributors": contributors,
        "iconurl": values["EXTENSION_ICONURL"],
        "screenshoturls": values["EXTENSION_SCREENSHOTURLS"],
    }.items():
        s4ext, count = re.subn(rf"^{key} .*$", f"{key} {value}", s4ext, flags=re.MULTILINE)
        if count != 1:
            raise SystemExit(f"extension_metadata: error: CLDL.s4ext has no single '{key}' line")
    python = PYTHON.read_text()
    python = re.sub(r'^REPOSITORY = "[^"]*"$', f'REPOSITORY = "{repository}"', python, flags=re.MULTILINE)
    python = re.sub(r'^CONTRIBUTORS = "[^"]*"$', f'CONTRIBUTORS = "{contributors}"', python, flags=re.MULTILINE)
    return {CMAKE: cmake, CATALOG: json.dumps(catalog, indent=2) + "\n", S4EXT: s4ext, PYTHON: python}


def main(argv: list[str] | None = None) -> int:
    repository, branch, contributors = current()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", default=repository, help=f"GitHub OWNER/NAME (now {repository})")
    parser.add_argument("--branch", default=branch, help=f"branch or tag the URLs point at (now {branch})")
    parser.add_argument("--contributors", default=contributors, help=f'"First Last (Org), ..." (now {contributors!r})')
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file differs")
    args = parser.parse_args(argv)
    files = rendered(args.repository, args.branch, args.contributors)
    stale = [path for path, text in files.items() if path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} differs from the extension metadata", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(files[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
