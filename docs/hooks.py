"""mkdocs hook: the README is the one source of the guide. Its title, introduction and Quick start
become the home page and every other `## ` section a guide page (`guide/NN-slug.md`, in README
order); links into `docs/` are rewritten to be relative to the site, other repository paths are
left as they are (they name files of the checkout)."""

from __future__ import annotations

import os
import re

from mkdocs.structure.files import File

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_sections(text: str) -> list[tuple[str, str]]:
    """[(title, markdown)] split at level-2 headings; the part before the second one is 'Home'."""
    parts = re.split(r"(?m)^## ", text)
    head, rest = parts[0], parts[1:]
    if rest:  # the first section (Quick start) stays on the home page
        head, rest = head + "## " + rest[0], rest[1:]
    sections = [("Home", head)]
    for part in rest:
        title, _, body = part.partition("\n")
        sections.append((title.strip(), f"# {title.strip()}\n{body}"))
    return sections


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def rewrite_links(markdown: str, depth: int, html_depth: int) -> str:
    """`docs/x` → relative to the page: markdown links from its source file (`depth` folders below
    the docs root; mkdocs adjusts them), raw HTML `src` from its built URL (`html_depth`)."""
    markdown = re.sub(r"\]\(docs/", "](" + "../" * depth, markdown)
    return re.sub(r'src="docs/', 'src="' + "../" * html_depth, markdown)


def on_files(files, config):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        sections = readme_sections(f.read())
    for i, (title, body) in enumerate(sections):
        if i == 0:
            uri, depth, html_depth = "index.md", 0, 0
        else:  # guide/NN-slug.md is served at guide/NN-slug/ with directory URLs
            uri, depth = f"guide/{i:02d}-{slug(title)}.md", 1
            html_depth = depth + bool(config.use_directory_urls)
        files.append(File.generated(config, uri, content=rewrite_links(body, depth, html_depth)))
    return files


SECTION_TITLES = {"Api": "API reference"}  # the folder names, where they read badly


def on_nav(nav, config, files):
    """Name the sections of the automatic navigation ('Api' → 'API reference')."""
    for item in nav.items:
        if getattr(item, "is_section", False) and item.title in SECTION_TITLES:
            item.title = SECTION_TITLES[item.title]
    return nav
