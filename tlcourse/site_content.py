"""What the course site shows, prepared as Sphinx/MyST-NB sources: no HTML generator of our own.

* README sections (offline use, performance, scaling) become pages, cut from README.md at build
  time, so the site never drifts from it. Links between sections are pointed at the right page.
* Each executed notebook gets a box under its title with what the course run recorded
  (``course-summary.json``): when it ran, status, run time, weights, key result, the command.
* Saved ipywidget state becomes a static snapshot with a note that the live widget needs a
  kernel (a static site has none), instead of an empty widget box.
* A local server's page embedded in an output (notebook 09's Gradio demo) becomes a note: the
  server is gone when the page is read, and the site loads nothing from another host.
* Paths of the machine that ran the course (the checkout, the home folder, the ``TLCOURSE_*``
  folders) are shown as ``.``, ``~`` and ``$TLCOURSE_...``: a published site does not show them.
* PNG outputs are re-encoded smaller (a 256-colour palette, or JPEG for photo-like images).
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from pathlib import Path

from . import TLCourseError

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
#: (page name, page title or None for the section's own heading, README ``##`` sections it holds).
README_PAGES = (
    ("offline", None, ("Offline classrooms",)),
    ("performance", None, ("Performance",)),
    ("scaling", "GPUs and more than one machine", ("GPU and Apple silicon", "More than one GPU or machine")),
)
LIVE_WIDGET_NOTE = ("This is a live widget (ipywidgets): it needs a running Python kernel, which a static page "
                    "does not have. Open the notebook in JupyterLab (<code>make lab</code>) to use it. Below is "
                    "a static snapshot of its state at the end of the course run; its controls do nothing here.")
LIVE_SERVER_NOTE = ("A live web demo was shown here, served by the notebook's kernel at {url}. A static page has no "
                    "server behind it: run the notebook in JupyterLab (<code>make lab</code>), or "
                    "<code>python -m tlcourse serve --model EXPORT_FOLDER</code>, to use the demo.")
_LOCAL_IFRAME = re.compile(r"<iframe[^>]*\bsrc=[\"']?(https?://(?:127\.0\.0\.1|localhost|\[::1\])[^\"' >]*)", re.I)
_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#{}$])")


def md_escape(text: str) -> str:
    """Text shown literally in MyST markdown (key results may hold ``*``, ``|`` or ``_``)."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def when(iso: str) -> str:
    """``2026-12-07T01:43:24+00:00`` as ``2026-12-07 01:43 UTC`` (the summary's times are UTC)."""
    match = re.match(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d)", iso or "")
    return f"{match[1]} {match[2]} UTC" if match else (iso or "?")


def slug(heading: str) -> str:
    """GitHub's (and MyST's ``myst_heading_anchors``) anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


# --------------------------------------------------------------------------- README

def readme_sections(text: str) -> tuple[str, dict[str, str]]:
    """``(title, {"## heading": body})``; the intro (before the first ``##``) is under ``""``."""
    title, current, sections, in_code = "", "", {"": []}, False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_code = not in_code
        if not in_code and line.startswith("# ") and not title:
            title = line[2:].strip()
            continue
        if not in_code and line.startswith("## "):
            current = line[3:].strip()
            sections[current] = []
            continue
        sections[current].append(line)
    return title, {k: "\n".join(v).strip("\n") for k, v in sections.items()}


def _subheadings(body: str) -> list[str]:
    lines, in_code, found = body.splitlines(), False, []
    for line in lines:
        if _FENCE.match(line):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.append(line.lstrip("#").strip())
    return found


def _shift_headings(body: str, by: int) -> str:
    out, in_code = [], False
    for line in body.splitlines():
        if _FENCE.match(line):
            in_code = not in_code
        if not in_code and re.match(r"#{2,6} ", line):
            hashes = len(line) - len(line.lstrip("#"))
            line = "#" * max(1, hashes + by) + line[hashes:]
        out.append(line)
    return "\n".join(out)


def readme_pages(readme: Path, repo: Path) -> tuple[str, dict[str, str], list[Path]]:
    """``(title, {page: markdown}, repository .md files the pages link to)`` for the README's pages.

    A missing section is an error naming it: the site must not silently lose a page.
    """
    title, sections = readme_sections(readme.read_text(encoding="utf-8"))
    anchors: dict[str, str] = {}  # README anchor -> "page.md#anchor" on the site
    for page, _, names in README_PAGES:
        for name in names:
            if name not in sections:
                raise TLCourseError(f"{readme} has no '## {name}' section, which the site shows as its {page!r} "
                                    f"page; restore the heading or update tlcourse.site_content.README_PAGES")
            anchors[slug(name)] = f"{page}.md"
            for sub in _subheadings(sections[name]):
                anchors[slug(sub)] = f"{page}.md#{slug(sub)}"
    pages, linked = {}, []
    for page, page_title, names in README_PAGES:
        if page_title:
            parts = [f"# {page_title}"] + [f"## {name}\n\n{sections[name]}" for name in names]
            body = "\n\n".join(parts)
        else:
            body = f"# {names[0]}\n\n" + _shift_headings(sections[names[0]], -1)
        body, files = rewrite_links(body, anchors, repo)
        pages[page] = body + "\n\n_This page is the README's section, included when the site was built._\n"
        linked += files
    return title, pages, sorted(set(linked))


def rewrite_links(text: str, anchors: dict[str, str], repo: Path, *, base: Path | None = None,
                  keep: set[Path] | None = None) -> tuple[str, list[Path]]:
    """Point README links at the site: anchors at their page, repository ``.md`` files kept (and copied).

    Any other relative link (a file that is not on the site) keeps only its text. ``base`` is the
    folder the links are relative to (default: ``repo``); ``keep`` limits the ``.md`` files kept.
    """
    files: list[Path] = []
    root = repo.resolve()

    def fix(match: re.Match) -> str:
        label, target = match.groups()
        if re.match(r"^[a-z]+:", target):
            return match.group(0)
        if target.startswith("#"):
            page = anchors.get(target[1:])
            return f"[{label}]({page})" if page else label
        path = ((base or repo) / target.split("#")[0]).resolve()
        if path.suffix == ".md" and path.is_file() and root in path.parents:
            if keep is None or path.relative_to(root) in keep:
                files.append(path.relative_to(root))
                return match.group(0)
        return label

    return _LINK.sub(fix, text), files


# --------------------------------------------------------------------------- notebooks

def notebook_title(nb, fallback: str) -> str:
    """The first markdown heading of the notebook (its title), else ``fallback``."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return fallback


def run_box(row: dict | None, name: str, download: str) -> str:
    """The MyST markdown box under a notebook page's title: what the course run recorded."""
    number = name[:2]
    how = (f"**Run it yourself:** `python -m tlcourse course --only {number}`, or open "
           f"`notebooks/{name}.ipynb` in JupyterLab (`make lab`). {{download}}`The executed notebook <{download}>`.")
    if row is None:
        return f"```{{warning}}\nThe course summary has no row for this notebook.\n\n{how}\n```"
    kind = ("a **smoke run** (random weights, a small subset, one epoch): its numbers only show that the code runs"
            if row.get("smoke") else "a full run of the course")
    result = (f"**Key result:** {md_escape(row['key_result'])}" if row.get("key_result")
              else f"**Error:** {md_escape(row.get('error') or 'none recorded')}")
    lines = [f"**Last executed** {when(row.get('finished', ''))} by `python -m tlcourse course`, {kind}.",
             f"**Status** {md_escape(row['status'])} · **run time** {row['seconds']:.1f} s · "
             f"**weights** {md_escape(row['weights'])}", result, how]
    style = "note" if row["status"] == "ok" else "error"
    return f"```{{admonition}} This notebook's run\n:class: {style}\n\n" + "\n\n".join(lines) + "\n```"


def compress_outputs(nb, stats: dict) -> object:
    """Re-encode the notebook's PNG outputs smaller (``stats`` adds up the bytes before and after)."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data") or {}
            if "image/png" in data:
                raw = base64.b64decode(data["image/png"])
                mime, small = compress_image(raw)
                del data["image/png"]
                data[mime] = base64.b64encode(small).decode()
                stats["image_bytes_before"] = stats.get("image_bytes_before", 0) + len(raw)
                stats["image_bytes_after"] = stats.get("image_bytes_after", 0) + len(small)
    return nb


#: Folders the course reads its data, weights, cache and checkpoints from (tlcourse.settings).
PATH_VARIABLES = ("TLCOURSE_WEIGHTS_DIR", "TLCOURSE_DATA_MIRROR", "TLCOURSE_DATA_DIR", "TLCOURSE_CACHE_DIR",
                  "TLCOURSE_CHECKPOINTS_DIR")


def machine_paths(repo: Path, environ=os.environ) -> list[tuple[str, str]]:
    """(absolute path, what the site shows instead), longest first so the most specific wins."""
    pairs = {str(Path(environ[v]).expanduser().resolve()): f"${v}" for v in PATH_VARIABLES
             if environ.get(v) and "://" not in environ[v]}
    pairs[str(Path(repo).resolve())] = "."
    pairs.setdefault(str(Path.home()), "~")
    return sorted(((k, v) for k, v in pairs.items() if len(k) > 1), key=lambda kv: len(kv[0]), reverse=True)


def hide_machine_paths(nb, pairs: list[tuple[str, str]]) -> int:
    """Replace the machine's paths in code and outputs; returns how many texts changed."""
    def clean(text: str) -> str:
        for path, shown in pairs:
            text = text.replace(path, shown)
        return text

    changed = 0
    for cell in nb.cells:
        texts = [(cell, "source")]
        for out in cell.get("outputs", []):
            texts.append((out, "text"))
            data = out.get("data") or {}
            texts += [(data, key) for key in ("text/plain", "text/html", "text/markdown") if key in data]
        for holder, key in texts:
            value = holder.get(key)
            if isinstance(value, str) and value != clean(value):
                holder[key] = clean(value)
                changed += 1
    return changed


def prepare_notebook(nb, row: dict | None, name: str, download: str, stats: dict) -> object:
    """The executed notebook as the site shows it: the run box under its title, widget snapshots."""
    import nbformat

    box = nbformat.v4.new_markdown_cell(run_box(row, name, download))
    first_heading = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"), -1)
    nb.cells.insert(first_heading + 1, box)
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data") or {}
            if WIDGET_VIEW in data:
                view = data.pop(WIDGET_VIEW)
                data["text/html"] = widget_snapshot(view.get("model_id", ""), state, data.get("text/plain", ""))
                stats["widgets"] = stats.get("widgets", 0) + 1
            local = _LOCAL_IFRAME.search(str(data.get("text/html", "")))
            if local:
                data.clear()
                note = LIVE_SERVER_NOTE.format(url=html.escape(local.group(1)))
                data["text/html"] = f'<p class="tlcourse-widget-note">{note}</p>'
                stats["live_servers"] = stats.get("live_servers", 0) + 1
    nb.metadata.pop("widgets", None)  # no saved state: MyST-NB then loads no widget JavaScript from a CDN
    return nb


# --------------------------------------------------------------------------- widgets and images

def widget_snapshot(model_id: str, state: dict, text: str) -> str:
    """Static HTML of a widget from the notebook's saved widget state, with the live-kernel note."""
    note = f'<p class="tlcourse-widget-note">{LIVE_WIDGET_NOTE}</p>'
    if model_id in state:
        body = _render_model(model_id, state, depth=0)
    else:  # no saved state: the widget's own text fallback
        body = f"<pre>{html.escape(text)}</pre>"
    return f'<div class="tlcourse-widget-snapshot">{note}{body}</div>'


def _render_model(model_id: str, state: dict, depth: int) -> str:
    entry = state.get(model_id)
    if entry is None or depth > 20:
        return ""
    kind, s = entry.get("model_name", ""), entry.get("state", {})
    label = html.escape(str(s.get("description", "")))
    if kind in ("VBoxModel", "HBoxModel", "BoxModel", "GridBoxModel"):
        children = [_render_model(str(c).removeprefix("IPY_MODEL_"), state, depth + 1) for c in s.get("children", [])]
        style = "display:flex;flex-wrap:wrap;gap:0.2em 1em" if kind == "HBoxModel" else ""
        return f'<div style="{style}">' + "".join(children) + "</div>"
    if kind in ("HTMLModel", "HTMLMathModel"):
        return f"<div>{s.get('value', '')}</div>"
    if kind in ("CheckboxModel", "ToggleButtonModel"):
        mark = "☑" if s.get("value") else "☐"
        return f"<span>{mark} {label}</span>"
    if kind in ("ToggleButtonsModel", "DropdownModel", "RadioButtonsModel", "SelectModel"):
        options, index = s.get("_options_labels", []), s.get("index")
        items = [f"<b>[{html.escape(str(o))}]</b>" if i == index else html.escape(str(o))
                 for i, o in enumerate(options)]
        return f"<div>{label} {' '.join(items)}</div>"
    if "value" in s:
        return f"<div>{label} {html.escape(str(s['value']))}</div>"
    return f"<div><i>({html.escape(kind)})</i></div>"


def compress_image(png: bytes) -> tuple[str, bytes]:
    """``(mime, bytes)``: a smaller encoding of a PNG output that looks the same.

    Line art (plots, at most 4,096 colours) becomes a 256-colour PNG; photographs (Grad-CAM, image
    grids) become a JPEG, since a palette would posterise them. The original wins when it is smaller.
    """
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    image.load()
    rgba = image.convert("RGBA")
    opaque = rgba.getextrema()[3][0] == 255  # matplotlib writes RGBA even when nothing is transparent
    rgb = rgba.convert("RGB") if opaque else rgba
    candidates = [("image/png", png)]
    buffer = io.BytesIO()
    if rgb.getcolors(maxcolors=4096) is not None:
        rgb.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
            buffer, format="PNG", optimize=True)
        candidates.append(("image/png", buffer.getvalue()))
    elif opaque:
        rgb.save(buffer, format="JPEG", quality=85, optimize=True)
        candidates.append(("image/jpeg", buffer.getvalue()))
    return min(candidates, key=lambda c: len(c[1]))
