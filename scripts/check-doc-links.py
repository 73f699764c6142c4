#!/usr/bin/env python3
"""Check the relative links of the repository's Markdown: every linked file exists and every
`#anchor` names a heading of its page (GitHub's slugs) or an `<a id>` in it. Prints each broken link and exits 1.

    scripts/check-doc-links.py            # README.md and docs/*.md
    scripts/check-doc-links.py FILE...    # those files only
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def lines_outside_code(text):
    """The lines of a Markdown text that are not inside a fenced code block."""
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    seen = {}
    result = set()
    for line in lines_outside_code(path.read_text(encoding="utf-8")):
        # explicit anchors (`<a id="x"></a>`) for places inside a section
        result.update(re.findall(r'<a id="([^"]+)"></a>', line))
        match = re.match(r"^#{1,6} (.*)$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def check(path):
    problems = []
    # Whole text outside code blocks, so a link whose text wraps onto the next line is seen.
    text = "\n".join(lines_outside_code(path.read_text(encoding="utf-8")))
    # Inline code may hold brackets and parentheses that are not links.
    text = re.sub(r"`[^`]*`", "", text)
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # http:, https:, mailto:
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{path.relative_to(ROOT)}: {target}: no such file")
            continue
        if anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{path.relative_to(ROOT)}: {target}: no such heading")
    return problems


def main(arguments):
    files = [Path(name).resolve() for name in arguments] or [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    problems = [problem for path in files for problem in check(path)]
    for problem in problems:
        print(problem)
    print(f"checked {len(files)} files: {len(problems)} broken links")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
