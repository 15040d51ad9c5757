"""The docs keep their promises: every labelled equation is checked by a test, every cited label exists, every
link into the repository resolves, and the index `docs/math/README.md` says true things.

Labels are defined by `\\tag{page.N}` in `docs/**/*.md` and cited as `(page.N)`, `(page.N)-(page.M)` or
`page.N-M` in docstrings and comments. `python tests/test_docs.py` refreshes the index's "implemented by" and
"checked by" columns from the code (the first two columns and hand-written notes are kept).
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INDEX = ROOT / "docs" / "math" / "README.md"
THIS = Path(__file__).resolve()
TAG = re.compile(r"\\tag\{([a-z]+)\.(\d+)\}")
# (page.N), (page.N-M), (page.N)-(page.M), page.N-M, bare page.N; dashes may be -, en or em dashes
CITE = re.compile(r"\b([a-z]+)\.(\d+)\b(?:\)?\s*[-–—]\s*\(?(?:\1\.)?(\d+)\b)?")
PAREN = re.compile(r"\(([a-z]+)\.(\d+)(?:[-–](\d+))?\)")  # any (word.N): catches typos in unknown prefixes
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")

# Labels that no test cites yet. Each entry needs a reason; test_allowance_is_not_stale fails as soon as a test
# cites one, so the list only shrinks.
ALLOWANCE: set[str] = set()

# Broken links, as (page, target), tolerated while a page is being written. Empty: every link resolves.
LINK_ALLOWANCE: set[tuple[str, str]] = set()


def defined_labels() -> dict[str, list[str]]:
    """label -> the pages that define it (a list, so a duplicate definition is visible)."""
    found = defaultdict(list)
    for page in sorted(set((ROOT / "docs").rglob("*.md")) - {INDEX}):
        for m in TAG.finditer(page.read_text(encoding="utf-8")):
            found[f"{m[1]}.{m[2]}"].append(page.relative_to(ROOT).as_posix())
    return dict(found)


def cited_in(line: str, pattern: re.Pattern = CITE, prefixes=None) -> list[str]:
    """Every label a line cites, ranges expanded: "(ln.6)-(ln.8)" -> ln.6, ln.7, ln.8."""
    out = []
    for m in pattern.finditer(line):
        if prefixes is not None and m[1] not in prefixes:
            continue
        first = int(m[2])
        last = int(m[3]) if m[3] and first < int(m[3]) <= first + 20 else first
        out += [f"{m[1]}.{i}" for i in range(first, last + 1)]
    return out


def _scopes(source: str) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of every def and class, decorators included."""
    spans = []

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                spans.append((first, child.end_lineno, prefix + child.name))
                walk(child, prefix + child.name + ".")
            else:
                walk(child, prefix)

    walk(ast.parse(source), "")
    return spans


def python_citations(prefixes) -> dict[str, dict[str, set[str]]]:
    """label -> file -> names of the innermost def/class citing it ("<module>" outside any)."""
    cites = defaultdict(lambda: defaultdict(set))
    for folder in ("minitx", "tests", "lessons", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.resolve() == THIS:  # the allowance above names labels; that is not a citation
                continue
            source, rel = path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix()
            try:
                spans = _scopes(source)
            except SyntaxError:  # a file mid-edit elsewhere fails its own tests; here it only loses its scopes
                spans = []
            for number, line in enumerate(source.splitlines(), 1):
                for label in cited_in(line, prefixes=prefixes):
                    inner = [s for s in spans if s[0] <= number <= s[1]]
                    cites[label][rel].add(max(inner)[2] if inner else "<module>")
    return cites


def index_rows() -> dict[str, list[str]]:
    """label -> the four cells of its row in docs/math/README.md; a label listed twice raises."""
    rows = {}
    for line in INDEX.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*\(([a-z]+\.\d+)\)\s*\|", line)
        if m:
            assert m[1] not in rows, f"docs/math/README.md lists ({m[1]}) twice"
            rows[m[1]] = [cell.strip() for cell in line.strip().strip("|").split("|")]
    return rows


def derivation_steps() -> set[str]:
    return {label for label, cells in index_rows().items() if "derivation step" in cells[3]}


# ------------------------------------------------------------------------------------------------- tests

LABELS = defined_labels()
PREFIXES = {label.split(".")[0] for label in LABELS}
CITES = python_citations(PREFIXES)


def _tested(label: str) -> bool:
    return any(f.startswith("tests/") for f in CITES.get(label, {}))


def test_every_label_is_defined_once():
    twice = {label: pages for label, pages in LABELS.items() if len(pages) > 1}
    assert not twice, f"labels defined more than once: {twice}"
    assert len(LABELS) > 50, "the label pattern found almost nothing: has the \\tag{} syntax changed?"


def test_every_label_is_checked_by_a_test_or_is_a_derivation_step():
    steps = derivation_steps()
    unchecked = sorted(label for label in LABELS if not _tested(label) and label not in steps | ALLOWANCE)
    assert not unchecked, (f"no test cites {unchecked}: cite the label in the test that checks it, add a test, "
                           "or (only for a step with no code of its own) mark it 'derivation step' in the index")


def test_every_cited_label_exists():
    """Catches typos such as (attn.13) in code, tests, lessons and prose, including unknown prefixes."""
    unknown = defaultdict(set)
    for label, files in CITES.items():
        if label not in LABELS:
            unknown[label] |= set(files)
    prose = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for folder in ("minitx", "tests", "lessons", "benchmarks"):
        prose += [p for p in sorted((ROOT / folder).rglob("*.py")) if p.resolve() != THIS]
    for path in prose:
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                for label in cited_in(line, PAREN):
                    if label not in LABELS:
                        unknown[label].add(path.relative_to(ROOT).as_posix())
    assert not unknown, f"cited but defined nowhere in docs/: {dict(unknown)}"


def test_index_lists_every_label_and_only_what_cites_it():
    """Every label has one row; every file and function the index names exists and cites that label."""
    rows = index_rows()
    assert set(rows) == set(LABELS), (f"index rows missing: {sorted(set(LABELS) - set(rows))}, "
                                      f"rows for no label: {sorted(set(rows) - set(LABELS))}")
    wrong = []
    for label, cells in rows.items():
        for path, name in index_entries(cells[2]) + index_entries(cells[3]):
            scopes = CITES.get(label, {}).get(path)
            if scopes is None or (name and name not in scopes):
                wrong.append(f"({label}) {path} {name}")
    assert not wrong, f"index entries that do not cite their label (run python tests/test_docs.py): {wrong}"


def test_allowance_is_not_stale():
    now_cited = sorted(label for label in ALLOWANCE if _tested(label))
    assert not now_cited, f"remove {now_cited} from ALLOWANCE in tests/test_docs.py: a test cites them now"
    assert ALLOWANCE <= set(LABELS), f"ALLOWANCE names undefined labels: {sorted(ALLOWANCE - set(LABELS))}"


def broken_links() -> set[tuple[str, str]]:
    """(page, target) of every relative link in README.md and docs/ whose file or folder does not exist."""
    broken = set()
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        if not page.exists():
            continue
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # web links and anchors in the same page
            if not (page.parent / target.split("#")[0]).exists():
                broken.add((page.relative_to(ROOT).as_posix(), target))
    return broken


def test_markdown_links_into_the_repo_resolve():
    broken = broken_links()
    assert broken <= LINK_ALLOWANCE, f"links to files that do not exist: {sorted(broken - LINK_ALLOWANCE)}"
    assert LINK_ALLOWANCE <= broken, f"fixed now, remove from LINK_ALLOWANCE: {sorted(LINK_ALLOWANCE - broken)}"


# ------------------------------------------------------------------------------------------ index refresh

def _entries(files: dict[str, set[str]], prefix: str) -> str:
    """"`file`: `name`, `name`" per file; the bare `file` when only its module level cites."""
    out = []
    for path in sorted(f for f in files if f.startswith(prefix)):
        names = sorted(files[path] - {"<module>"})
        out.append(f"`{path}`" + (": " + ", ".join(f"`{n}`" for n in names) if names else ""))
    return "; ".join(out)


def index_entries(cell: str) -> list[tuple[str, str]]:
    """(file, name) pairs of a cell written by _entries; name "" for a bare file."""
    pairs = []
    for group in cell.split(";"):
        names = re.findall(r"`([^`]+)`", group)
        if names and names[0].endswith(".py"):
            pairs += [(names[0], n) for n in names[1:]] or [(names[0], "")]
    return pairs


def refresh_index() -> None:
    """Rewrite columns 3-4 from the citations; keep a hand-written cell where nothing cites the label."""
    lines = INDEX.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\|\s*\(([a-z]+\.\d+)\)\s*\|", line)
        if not m:
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        files = CITES.get(m[1], {})
        code = _entries(files, "minitx/") or cells[2]
        tests = "; ".join(e for e in (_entries(files, "tests/"), _entries(files, "lessons/")) if e)
        checked = tests if _tested(m[1]) else (cells[3] if "derivation step" in cells[3] else tests or "—")
        lines[i] = f"| {cells[0]} | {cells[1]} | {code} | {checked} |"
    INDEX.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    refresh_index()
    sys.exit(0)
