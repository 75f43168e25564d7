"""The README is the front door and docs/ the reference: what they say must match the code.

The README stays short and starts with the two commands; every docs page is one click from
it; no relative link points nowhere; the configuration page names every setting; and the
architecture page's picture of the layers has the code's own arrows.
"""

import re
from pathlib import Path
from urllib.parse import unquote

from settings import Settings
from tests.test_layers import FLOORS, graph, room

ROOT = Path(__file__).resolve().parents[2]
README_PATH = ROOT / "README.md"
README = README_PATH.read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README_PATH, *DOCS]

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); the text may span lines, the target may not.
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(markdown: str) -> str:
    """``markdown`` without code blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", markdown))


def anchors(markdown: str) -> set[str]:
    """The heading anchors GitHub gives ``markdown``'s headings (repeats get ``-1``, ``-2``)."""
    found: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", markdown)):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        anchor, repeat = slug, 0
        while anchor in found:
            repeat += 1
            anchor = f"{slug}-{repeat}"
        found.add(anchor)
    return found


def relative_links(page: Path) -> list[str]:
    """The links of ``page`` that point inside the repository."""
    return [
        target
        for target in LINK.findall(prose(page.read_text()))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto: ...
    ]


def resolve(page: Path, target: str) -> tuple[Path, str]:
    """The path and the anchor a relative link of ``page`` points at."""
    path, _, anchor = target.partition("#")
    return (page.parent / unquote(path)).resolve() if path else page, anchor


def test_every_setting_is_documented_on_the_configuration_page() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in page]
    assert missing == [], f"settings missing from docs/configuration.md's table: {missing}"


def test_the_readme_shows_the_two_commands_before_any_other_section() -> None:
    sections = [match.start() for match in re.finditer(r"^## ", README, re.MULTILINE)]
    first_section_ends = sections[1] if len(sections) > 1 else len(README)
    for command in ("make run", "make test"):
        assert 0 <= README.find(command) < first_section_ends, command


def test_the_readme_is_under_14_kb() -> None:
    size = len(README.encode())
    assert size < 14 * 1024, f"README.md is {size} bytes: move reference material to docs/"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {resolve(README_PATH, target)[0] for target in relative_links(README_PATH)}
    unlinked = [page.name for page in DOCS if page.resolve() not in linked]
    assert unlinked == [], f"docs pages the README does not link: {unlinked}"


def test_every_relative_link_points_at_something_that_exists() -> None:
    broken = []
    for page in PAGES:
        for target in relative_links(page):
            path, anchor = resolve(page, target)
            if not path.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path.read_text()):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == [], "broken links:\n" + "\n".join(broken)


def test_the_architecture_picture_has_the_code_s_arrows() -> None:
    """Every room is drawn on its floor, and the arrows are the imports between rooms with
    the shortcuts left out (an import another path of arrows already reaches)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    picture = re.search(r"^## The layers$.*?^```mermaid\n(.*?)^```", text, re.M | re.S)
    assert picture is not None, "docs/architecture.md: no mermaid picture under 'The layers'"
    drawn_floors: dict[str, int] = {}
    drawn_arrows: set[tuple[str, str]] = set()
    floor = -1
    for line in picture.group(1).splitlines():
        if match := re.match(r"\s*subgraph F(\d+)\b", line):
            floor = int(match.group(1))
        elif match := re.match(r"\s*(\w+)\s*-->\s*(\w+)\s*$", line):
            drawn_arrows.add((match.group(1), match.group(2)))
        elif match := re.match(r"\s*(\w+)\[", line):
            drawn_floors[match.group(1)] = floor
    assert drawn_floors == FLOORS

    imports: dict[str, set[str]] = {name: set() for name in FLOORS}
    for module, targets in graph().items():
        imports[room(module)] |= {room(t) for t in targets} - {room(module)}

    def reachable(start: str, without: tuple[str, str]) -> set[str]:
        seen: set[str] = set()
        todo = [t for t in imports[start] if (start, t) != without]
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(imports[current])
        return seen

    arrows = {
        (source, target)
        for source, targets in imports.items()
        for target in targets
        if target not in reachable(source, without=(source, target))
    }
    assert sorted(drawn_arrows - arrows) == [], "arrows drawn that the code does not have"
    assert sorted(arrows - drawn_arrows) == [], "imports the picture does not draw"
