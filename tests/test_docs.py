"""The user docs hold together: every relative link and #anchor in the README, docs/*.md and the experiments'
READMEs resolves, and neither the docs nor the code read like a lab notebook."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A lab notebook's words: which session or which look at a task showed what. That history belongs in
# CHANGELOG.md and the experiments' READMEs.
NOTEBOOK = re.compile(r"(previous|this|first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth)[ _]session"
                      r"|(first|second|third|fourth|fifth) look", re.I)
NOTEBOOK_PATHS = ("bicycle", "kernels", "README.md", "docs")

LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def user_docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("experiments/*/README.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation removed except hyphens, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file, with GitHub's -1, -2 ... suffixes for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[str]:
    """The link targets of a Markdown file, outside code blocks and inline code."""
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text()))
    return LINK.findall(text)


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto: ... : not checked here
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{shown(path)}: ({target})"
        if not dest.exists():
            problems.append(f"{where}: {file_part} does not exist")
            continue
        if anchor:
            if dest.is_dir() or dest.suffix.lower() != ".md":
                problems.append(f"{where}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(dest):
                problems.append(f"{where}: no heading in {shown(dest)} has the anchor #{anchor}")
    return problems


def notebook_lines() -> list[str]:
    hits = []
    for name in NOTEBOOK_PATHS:
        base = ROOT / name
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts or f.suffix in (".pyc", ".so", ".png"):
                continue
            try:
                text = f.read_text()
            except (UnicodeDecodeError, OSError):
                continue
            for i, line in enumerate(text.splitlines(), 1):
                if NOTEBOOK.search(line):
                    hits.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()}")
    return hits


@pytest.mark.parametrize("path", user_docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(path):
    problems = broken_links(path)
    assert not problems, "\n".join(problems)


def test_the_docs_have_links_to_check():
    assert len(user_docs()) >= 10
    assert sum(len(links(p)) for p in user_docs()) >= 30


def test_the_link_check_catches_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section (`--flag`)\n")
    probe = tmp_path / "probe.md"
    probe.write_text("# A title\n\n[a](other.md#no-such-heading) [b](no_such_file.md) [c](#a-title) "
                     "[d](other.md#a-section---flag) `[e](inline.md)`\n\n```\n[f](fenced.md)\n```\n")
    problems = "\n".join(broken_links(probe))
    assert "#no-such-heading" in problems and "no_such_file.md does not exist" in problems
    for fine in ("#a-title", "#a-section---flag", "inline.md", "fenced.md"):
        assert fine not in problems, problems


def test_slugs_follow_github():
    assert slug("Which weights (`--weights`)") == "which-weights---weights"
    assert slug("The paper's ablation") == "the-papers-ablation"
    assert slug("Defaults on unseen data (`experiments/generalization/generalization.py`)") == \
        "defaults-on-unseen-data-experimentsgeneralizationgeneralizationpy"


def test_no_lab_notebook_in_the_code_or_the_user_docs():
    hits = notebook_lines()
    assert not hits, "history belongs in CHANGELOG.md or experiments/*/README.md:\n" + "\n".join(hits)
