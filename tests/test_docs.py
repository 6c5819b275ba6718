"""The README's promises: CI runs the README's test command, and the Quickstart commands are real."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section, re.S)


def test_quickstart_has_one_run_command_and_one_test_command():
    run, test = _quickstart_commands()[:2]
    assert "\n" not in run and "python -m ingest serve" in run and "pip install" in run
    assert "\n" not in test and "pytest" in test and "pip install" in test


def test_ci_runs_the_readme_test_command_verbatim():
    test = _quickstart_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines()


# --- references between the documents ---------------------------------------------------------------------------

DOCUMENTS = sorted({*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("clients/*/*.md"),
                    *ROOT.glob("grafana/*.md")})
# A path into the repository, written out in prose: a top-level directory of ours, then a file with an extension.
# Not checked where a document names files of other projects (VERSIONS.md) or files that were removed (CHANGELOG.md).
_PATHS_ELSEWHERE = {"CHANGELOG.md", "VERSIONS.md"}
_REPO_PATH = re.compile(r"(?<![\w./-])((?:bench|clickhouse|clients|docs|grafana|haproxy|ingest|prometheus|tests)/"
                        r"[\w./-]*\.\w+)")


def _anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped, spaces to hyphens, -1 on
    repeats."""
    seen: dict[str, int] = {}
    anchors = set()
    body = re.sub(r"```.*?```", "", markdown, flags=re.S)
    for heading in re.findall(r"^#{1,6} +(.+?) *$", body, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_every_link_and_path_in_the_documents_points_at_something_that_exists():
    dangling = []
    for doc in DOCUMENTS:
        text = doc.read_text()
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            if not linked.exists():
                dangling.append(f"{doc.relative_to(ROOT)}: ({target}): no such file")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked.read_text()):
                dangling.append(f"{doc.relative_to(ROOT)}: ({target}): no such heading")
        for path in [] if doc.name in _PATHS_ELSEWHERE else _REPO_PATH.findall(prose):
            if not (ROOT / path.rstrip(".")).exists():
                dangling.append(f"{doc.relative_to(ROOT)}: {path}: no such file")
        if re.search(r"\bsee DESIGN\b|DESIGN\.md", prose):
            dangling.append(f"{doc.relative_to(ROOT)}: DESIGN: not in the repository")
    assert dangling == []


def test_the_env_example_points_at_sections_that_exist():
    # Comments there name a document and a section in quotes, e.g. (docs/api.md, "Slow clients" under POST /events).
    text = (ROOT / ".env.example").read_text()
    references = re.findall(r"\((README|[\w/]+\.md),? \"([^\"]+)\"", text)
    assert references, "no references found: the pattern no longer matches how .env.example names sections"
    for document, section in references:
        target = ROOT / (document if document.endswith(".md") else f"{document}.md")
        assert target.exists(), document
        written = target.read_text()
        assert re.search(rf"^#+ .*{re.escape(section)}|\*\*{re.escape(section)}\*\*", written, re.M), \
            f".env.example: {document} has no section {section!r}"
