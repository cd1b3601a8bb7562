"""``python -m tlcourse site``: the executed course as a static, searchable book.

The builder is Sphinx with MyST-NB and the Sphinx Book Theme (the engine of Jupyter Book 1),
because it builds fully offline: Jupyter Book 2 / mystmd downloads its HTML theme from the
internet at build time. This module only prepares sources and calls Sphinx: the executed
notebooks (``notebooks/executed/``, re-run first when missing or older than their sources), the
course summary, README sections, and the configuration in ``site/conf.py``. Notebooks are
discovered like the runner does (``tlcourse.course.find_notebooks``), so a new one needs no change.
"""

from __future__ import annotations

import io
import shutil
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

from . import TLCourseError
from .course import find_notebooks
from .course_summary import load_summary
from .settings import project_root

#: Site configuration (conf.py, CSS), committed; sources and HTML are generated under build/.
CONFIG_DIR = "site"
DEFAULT_OUTPUT = Path("build") / "site"
DOWNLOADS = "_executed"  # executed notebooks offered for download (excluded from pages in conf.py)


@dataclass
class SiteReport:
    output: Path
    pages: int
    seconds: float
    total_bytes: int
    largest_page: tuple[str, int]
    stats: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        name, size = self.largest_page
        images = ""
        if self.stats.get("image_bytes_before"):
            images = (f"; notebook images {self.stats['image_bytes_before'] / 1e6:.2f} MB -> "
                      f"{self.stats['image_bytes_after'] / 1e6:.2f} MB")
        return (f"site: {self.pages} pages, {self.total_bytes / 1e6:.1f} MB in {self.output} "
                f"(largest page {name}, {size / 1e3:.0f} kB with its images){images}; built in {self.seconds:.1f}s"
                + (f"; {len(self.warnings)} Sphinx warnings" if self.warnings else ""))


def stale_notebooks(sources: list[Path], executed: Path) -> list[Path]:
    """Sources whose executed copy is missing, older than the source, or has no row in the summary."""
    try:
        rows = {r["notebook"] for r in load_summary(executed)["notebooks"]}
    except TLCourseError:
        rows = set()
    stale = []
    for src in sources:
        out = executed / src.name
        if not out.exists() or out.stat().st_mtime < src.stat().st_mtime or src.stem not in rows:
            stale.append(src)
    return stale


def prepare_sources(sources: list[Path], executed: Path, src: Path, *, repo: Path | None = None) -> dict:
    """Write the Sphinx source folder: landing page, README pages, one page per executed notebook."""
    import nbformat

    from .site_content import (
        compress_outputs,
        hide_machine_paths,
        machine_paths,
        md_escape,
        notebook_title,
        prepare_notebook,
        readme_pages,
        rewrite_links,
    )

    repo = repo or project_root()
    paths = machine_paths(repo)
    if src.exists():
        shutil.rmtree(src)
    (src / "notebooks").mkdir(parents=True)
    (src / DOWNLOADS).mkdir()
    rows = {r["notebook"]: r for r in load_summary(executed)["notebooks"]}
    stats: dict = {}
    table = ["| notebook | status | run time | weights | key result |", "|---|---|---|---|---|"]
    pages = []
    for source in sources:
        path, row = executed / source.name, rows.get(source.stem)
        if not path.exists() and row:  # it failed before papermill wrote anything: a row, no page
            table.append(f"| {md_escape(source.stem)} | {md_escape(row['status'])} | | | "
                         f"{md_escape(row.get('error', ''))} |")
            continue
        if not path.exists():
            raise TLCourseError(f"{path} is missing: run `python -m tlcourse course --only {source.name[:2]}` "
                                "(or `make site`, which runs it)")
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as exc:  # truncated or hand-edited JSON: name the file and the fix
            raise TLCourseError(f"{path} is not a readable notebook ({type(exc).__name__}: {str(exc)[:120]}); run "
                                f"`python -m tlcourse course --only {source.name[:2]}` again") from exc
        stats["paths_hidden"] = stats.get("paths_hidden", 0) + hide_machine_paths(nb, paths)
        nb = compress_outputs(nb, stats)
        nbformat.write(nb, src / DOWNLOADS / path.name)  # the executed notebook, its images as on the page
        title = notebook_title(nb, source.stem)
        link = f"[{md_escape(title).replace(chr(92) + '`', '`')}](notebooks/{path.name})"
        nb = prepare_notebook(nb, row, source.stem, f"../{DOWNLOADS}/{path.name}", stats)
        nbformat.write(nb, src / "notebooks" / path.name)
        pages.append(f"notebooks/{source.stem}")
        if row:
            table.append(f"| {link} | {md_escape(row['status'])} | "
                         f"{row['seconds']:.1f}\u00a0s | {md_escape(row['weights'])} | "
                         f"{md_escape(row.get('key_result') or row.get('error', ''))} |")
        else:
            table.append(f"| {link} | not in the summary | | | |")
    readme = repo / "README.md"
    title, readme_md, linked = readme_pages(readme, repo)
    for page, text in readme_md.items():
        (src / f"{page}.md").write_text(text, encoding="utf-8")
    for rel in linked:  # docs the README pages link to; their own links to files not on the site become text
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        text, _ = rewrite_links((repo / rel).read_text(encoding="utf-8"), {}, repo, base=(repo / rel).parent,
                                keep=set(linked))
        (src / rel).write_text(text, encoding="utf-8")
    (src / "index.md").write_text(landing_page(title, readme, rows, sources, table, pages, linked), encoding="utf-8")
    stats["notebooks"] = len(pages)
    return stats


def landing_page(title: str, readme: Path, rows: dict, sources: list[Path], table: list[str], pages: list[str],
                 linked: list[Path]) -> str:
    from .site_content import README_PAGES, readme_sections

    _, sections = readme_sections(readme.read_text(encoding="utf-8"))
    ran = [rows[s.stem] for s in sources if s.stem in rows]
    dates = sorted(r.get("finished", "")[:10] for r in ran if r.get("finished"))
    smoke = [r["notebook"][:2] for r in ran if r.get("smoke")]
    period = (f"{dates[0]}" if dates and dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}") if dates else "?"
    run_line = (f"The pages below show the course as `python -m tlcourse course` ran it ({period}; "
                f"{sum(r['seconds'] for r in ran):.0f} s for {len(ran)} notebooks, "
                f"{sum(r['status'] == 'ok' for r in ran)} ok"
                + ("" if not smoke else "; a **smoke run**" if len(smoke) == len(ran) else
                   f"; notebooks {', '.join(smoke)} from a **smoke run**")
                + (": random weights, a small subset, one epoch, so those numbers teach nothing" if smoke else "")
                + "). Each page says which weights produced its numbers.")
    two = sections.get("Two commands", "")
    toc = ["```{toctree}", ":caption: Notebooks", ":maxdepth: 1", "", *pages, "```", "",
           "```{toctree}", ":caption: Running the course", ":maxdepth: 1", "", *[page for page, _, _ in README_PAGES],
           "```"]
    if linked:
        toc += ["", "```{toctree}", ":hidden:", "", *[str(p.with_suffix("")) for p in linked], "```"]
    return "\n".join([f"# {title}", "", sections.get("", ""), "", "## Two commands", "", two, "",
                      "## The notebooks", "", run_line, "", *table, "", *toc, ""])


def run_sphinx(src: Path, output: Path, config: Path, doctrees: Path) -> list[str]:
    """Build HTML with Sphinx in this process; returns its warnings (an error raises TLCourseError)."""
    from sphinx.cmd.build import build_main

    log, warnings = io.StringIO(), io.StringIO()
    with redirect_stdout(log), redirect_stderr(warnings):
        status = build_main(["-b", "html", "-q", "-c", str(config), "-d", str(doctrees), str(src), str(output)])
    lines = [ln for ln in warnings.getvalue().splitlines() if ln.strip()]
    if status != 0:
        raise TLCourseError(f"Sphinx could not build the site (exit {status}): "
                            + (" | ".join(lines[-3:]) or log.getvalue()[-300:]))
    return lines


def site_pages(output: Path) -> list[Path]:
    """The built pages (the theme's ``_static/*.html`` are template fragments, not pages)."""
    return sorted(p for p in output.rglob("*.html") if "_static" not in p.relative_to(output).parts)


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def largest_page(output: Path) -> tuple[str, int]:
    """The HTML page that weighs most together with the images it shows."""
    import re

    best = ("", 0)
    for page in site_pages(output):
        text = page.read_text(encoding="utf-8", errors="replace")
        size = len(text.encode())
        for src in set(re.findall(r'<img[^>]+src="([^"]+)"', text)):
            target = (page.parent / src).resolve()
            if target.is_file():
                size += target.stat().st_size
        if size > best[1]:
            best = (str(page.relative_to(output)), size)
    return best


def build_site(*, executed: Path | None = None, output: Path | None = None, sources: list[Path] | None = None,
               run_missing: bool = True, smoke: bool = False, echo=print) -> SiteReport:
    """Build the site into ``output`` (default ``build/site``); re-run stale notebooks first if allowed."""
    root = project_root()
    sources = sources or find_notebooks()
    executed = Path(executed) if executed else sources[0].parent / "executed"
    output = Path(output) if output else root / DEFAULT_OUTPUT
    if not (root / CONFIG_DIR / "conf.py").is_file():
        raise TLCourseError(f"{root / CONFIG_DIR / 'conf.py'} is missing: build the site from a checkout of the "
                            "course repository (its site/ folder holds the configuration)")
    if output.exists() and any(output.iterdir()) and not (output / ".buildinfo").exists():
        raise TLCourseError(f"--output {output} exists and is not a site built before (no .buildinfo): "
                            "choose a new or empty folder; nothing was deleted")
    stale = stale_notebooks(sources, executed)
    if stale and not run_missing:
        raise TLCourseError(f"{len(stale)} executed notebooks in {executed} are missing or older than their sources "
                            f"({', '.join(p.stem for p in stale)}): run `python -m tlcourse course` first")
    if stale:
        from .course import run_course

        echo(f"site: running {len(stale)} notebooks first (missing or older than their sources): "
             + ", ".join(p.stem for p in stale))
        results = run_course(folder=sources[0].parent, output=executed, smoke=smoke,
                             only=[p.name[:2] for p in stale], echo=echo)
        failed = [r.name for r in results if r.status != "ok"]
        if failed:
            echo(f"site: {', '.join(failed)} failed; their pages show the error")
    start = time.perf_counter()
    work = output.parent / f".{output.name}-work"
    try:
        stats = prepare_sources(sources, executed, work / "src", repo=root)
        warnings = run_sphinx(work / "src", work / "html", root / CONFIG_DIR, work / "doctrees")
        for source_map in (work / "html").glob("_static/**/*.map"):  # the theme's debugging aids: half its size
            source_map.unlink()
        if output.exists():  # replaced only by a complete build: a failed one leaves the last site as it was
            shutil.rmtree(output)
        shutil.move(work / "html", output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return SiteReport(output, len(site_pages(output)), time.perf_counter() - start, folder_size(output),
                      largest_page(output), stats, warnings)
