"""The documentation site builds without warnings, covers the public API and is the README."""

import glob
import os
import re
import subprocess
import sys

import pytest

import diffjax

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr  # --strict: any warning fails
    return str(out)


def test_every_public_name_has_an_entry_in_the_api_reference(site):
    html = "".join(open(f, encoding="utf-8").read()
                   for f in glob.glob(os.path.join(site, "api", "**", "*.html"), recursive=True))  # fmt: skip
    documented = {anchor.rsplit(".", 1)[-1] for anchor in re.findall(r'id="(diffjax\.[\w.]+)"', html)}
    assert not [name for name in diffjax.__all__ if name not in documented]


def test_the_guide_is_the_readme_one_page_per_section(site):
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    titles = re.findall(r"(?m)^## (.+)$", readme)
    pages = sorted(os.listdir(os.path.join(site, "guide")))
    assert len(pages) == len(titles) - 1  # the first section (Quick start) is on the home page
    home = open(os.path.join(site, "index.html"), encoding="utf-8").read()
    assert titles[0] in home and "make test" in home
    for page, title in zip(pages, titles[1:], strict=True):
        text = open(os.path.join(site, "guide", page, "index.html"), encoding="utf-8").read()
        assert re.sub(r"[^a-z0-9]", "", title.split()[0].lower()) in re.sub(r"[^a-z0-9]", "", text.lower())


def test_the_measured_pictures_the_guide_links_are_in_the_site(site):
    linked = []
    for path in glob.glob(os.path.join(site, "guide", "*", "index.html")):
        for ref in re.findall(r'(?:href|src)="([^"]+\.png)"', open(path, encoding="utf-8").read()):
            linked.append(os.path.normpath(os.path.join(os.path.dirname(path), ref)))
    assert len(linked) >= 5, "the guide links the measured figures"
    assert [p for p in linked if not os.path.exists(p)] == []
