"""The documentation holds together: every document, file or heading that README.md and docs/*.md link or cite
exists in the repository, every docs/ page is reachable from the README's index, and no document is cited that
the repository does not hold."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
# a repository path in backticks: a top-level folder of the repository, then more path
REPO_PATH = re.compile(
    r"^(?:\.\./)?((?:cldl|CLDLSegmentation|CLDLTraining|Testing|benchmarks|scripts|docs)/[\w./-]*[\w/])$"
)
# names the engine writes or that live outside this repository (the authors' files, a run's outputs)
NOT_REPOSITORY_FILES = ("summary.md",)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    """The anchors of a page's headings (outside code blocks)."""
    anchors, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6} (.+)", line)):
            anchors.add(_anchor(match.group(1)))
    return anchors


def _prose(page: Path) -> str:
    """A page without its fenced code blocks (commands there are examples, not citations)."""
    return re.sub(r"^ *```.*?^ *```", "", page.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)


def _tracked() -> set[str]:
    """Every path git tracks, and every folder holding one (files not yet added count: the worktree's files)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    paths = set(listed)
    for path in listed:
        parts = path.split("/")
        paths.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return paths


def _links(text: str, base: Path) -> list[tuple[str, str]]:
    """(path relative to the repository root, anchor) of every local link in ``text``, a page in folder ``base``."""
    out = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # https://..., mailto:...: not a repository file
        path, _, anchor = target.partition("#")
        resolved = (base / path).resolve()
        out.append((resolved.relative_to(ROOT.resolve()).as_posix(), anchor))
    return out


def _broken_links(text: str, base: Path, tracked: set[str]) -> list[str]:
    """The links in ``text`` to a file the repository lacks, or to a heading its Markdown page lacks."""
    broken = []
    for path, anchor in _links(text, base):
        if path not in tracked:
            broken.append(path)
        elif anchor and path.endswith(".md") and anchor not in _anchors(ROOT / path):
            broken.append(f"{path}#{anchor}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_linked_file_and_heading_exists(page: Path) -> None:
    broken = _broken_links(_prose(page), page.parent, _tracked())
    assert not broken, f"{page.relative_to(ROOT)} links what does not exist: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_cited_repository_path_exists(page: Path) -> None:
    """Backticked repository paths (a docs page, a benchmark script, a preset) name real files."""
    missing = sorted(set(_cited_paths(_prose(page))) - _tracked())
    assert not missing, f"{page.relative_to(ROOT)} cites paths that do not exist: {missing}"


def _cited_paths(text: str) -> list[str]:
    """The repository paths written in backticks in ``text`` (without a trailing slash)."""
    spans = CODE_SPAN.findall(text)
    return [m.group(1).rstrip("/") for span in spans if (m := REPO_PATH.match(span.strip()))]


def test_every_markdown_file_named_anywhere_exists() -> None:
    """A `.md` file named in code, configs, tests or documents is one of the repository's own documents, so no
    document outside the repository (a design note, say) is ever cited."""
    tracked = _tracked()
    documents = {Path(p).name for p in tracked if p.endswith(".md")}
    texts = [p for p in tracked if Path(p).suffix in {".md", ".py", ".sh", ".yaml", ".json", ".txt", ".ui"}]
    named = {}
    for relative in texts:
        path = ROOT / relative
        if path.is_file():
            for name in re.findall(r"[\w.-]+\.md\b", path.read_text(encoding="utf-8", errors="replace")):
                named.setdefault(name, relative)
    assert "method.md" in named and "README.md" in named  # the scan sees the documents it should
    unknown = {name: where for name, where in named.items() if name not in documents | set(NOT_REPOSITORY_FILES)}
    assert not unknown, f"documents named but not in the repository (name: first file naming it): {unknown}"


def test_every_docs_page_is_in_the_readme_index() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    index = readme[readme.index("## Documentation") :]
    index = index[: index.index("\n## ", 1)]
    linked = {path for path, _ in _links(index, ROOT)}
    pages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")}
    assert len(pages) >= 12 and pages <= linked, f"docs pages missing from the README's index: {pages - linked}"


def test_the_extension_homepage_anchor_is_a_readme_heading() -> None:
    """Slicer's extension catalog and the modules' help link the README's "3D Slicer" section."""
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    anchor = re.search(r'set\(EXTENSION_HOMEPAGE "[^"#]*#([\w-]+)"\)', cmake)
    assert anchor is not None
    assert anchor.group(1) in _anchors(ROOT / "README.md")


def test_the_readme_stays_short() -> None:
    """The README introduces and points; the details live in docs/ (issue 22: about 150-200 lines)."""
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


def test_the_checks_catch_what_they_should() -> None:
    """The parsers find a missing file, a missing heading and a missing cited path, so the tests above cannot pass
    vacuously; the names are built here so that this file names no document that does not exist."""
    tracked = _tracked()
    absent = "no_such_page" + ".md"
    text = f"[a]({absent}) [b](method.md#no-such-heading) [c](reproduce.md#brats-2018) ![d](demo_snapshot.png) [e](https://x.org)"
    assert _broken_links(text, ROOT / "docs", tracked) == [f"docs/{absent}", "docs/method.md#no-such-heading"]
    assert _cited_paths(f"see `docs/{absent}`, `benchmarks/gpu.sh`, `cldl/` and `scripts/test.sh --slow`") == [
        f"docs/{absent}",
        "benchmarks/gpu.sh",
    ]
    assert "benchmarks/gpu.sh" in tracked and f"docs/{absent}" not in tracked
    assert _anchor("`cldl demo`") == "cldl-demo"
    assert (
        _anchor("MM-WHS presets: reconstructions after the paper") == "mm-whs-presets-reconstructions-after-the-paper"
    )
    assert sum(len(_cited_paths(_prose(page))) for page in PAGES) > 50  # the pages do cite paths
