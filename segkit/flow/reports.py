"""Executed notebooks as self-contained HTML reports, for reading without Jupyter.

`write_html_report("outputs/pipelines/demo/05_predict.ipynb")` writes `05_predict.html` beside
it: one file that opens in any browser, offline (nbconvert's HTMLExporter, lab template):

- every picture embedded and sized for the web: a figure whose longest side is above
  `MAX_SIDE` pixels is scaled down, PNGs are re-saved optimised, and a large photo-like one
  (overlays of images) becomes a JPEG where that is less than half the bytes;
- every picture in a <figure> with alt text and a caption: the cell's first comment line, else
  the notebook section (markdown heading) it is in;
- tables as HTML tables (pandas' text/html outputs);
- no script from the internet (no MathJax, require.js, widget or mermaid loaders), so it shows
  the same on a machine without network;
- a header: the notebook, when and how long it ran, its parameters, whether and where it
  failed, and a link to outputs/index.html (segkit.flow.index) when the report is under the
  outputs folder.

A pipeline (segkit.flow.pipeline.run_pipeline) writes one beside each executed notebook.

Example:
    write_html_report("outputs/runs/efficientnet_lite0_fold0/04_train.ipynb")
    # -> outputs/runs/efficientnet_lite0_fold0/04_train.html
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from pathlib import Path

from segkit.core.paths import outputs_dir, write_text_atomic

MAX_SIDE = 1200  # pixels: the longest side of a picture in a report
JPEG_ABOVE = 150_000  # bytes: an optimised PNG above this is tried as a JPEG
JPEG_QUALITY = 85
SMALL = 64_000  # bytes: a PNG this small and not too large in pixels is kept as it is

# The lab template without the scripts it fetches from a CDN, pictures as captioned figures,
# and a header block of our own.
_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}
<style type="text/css">
.segkit-header { font-family: var(--jp-ui-font-family, sans-serif); margin: 1em 0 1.5em;
  padding: 0.8em 1em; border: 1px solid #ddd; border-radius: 6px; background: #fafafa; }
.segkit-header h1 { font-size: 1.4em; margin: 0 0 0.3em; }
.segkit-header nav { float: right; }
.segkit-header a { color: #1a5fb4; text-decoration: underline; }
.segkit-header table { border-collapse: collapse; font-size: 0.9em; margin-top: 0.5em; }
.segkit-header td, .segkit-header th { border: 1px solid #ddd; padding: 2px 8px;
  text-align: left; vertical-align: top; }
.segkit-header summary { cursor: pointer; margin-top: 0.5em; font-size: 0.9em; }
.segkit-failed { color: #b00020; font-weight: bold; }
figure.segkit-figure { margin: 0.3em 0; }
figure.segkit-figure figcaption { font-size: 0.85em; color: #555; margin-top: 0.2em; }
figure.segkit-figure img { max-width: 100%; height: auto; }
</style>
{%- endblock extra_css -%}
{%- block body_header -%}
{{ super() }}
{{ resources.segkit_header }}
{%- endblock body_header -%}
{% block data_png scoped %}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
<figure class="segkit-figure">
<img src="data:image/png;base64,{{ output.data['image/png'] | escape_html }}"
 alt="{{ output.metadata.get('segkit', {}).get('alt', 'figure') | escape_html }}">
<figcaption>{{ output.metadata.get('segkit', {}).get('caption', '') | escape_html }}</figcaption>
</figure>
</div>
{%- endblock data_png %}
{% block data_jpg scoped %}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
<figure class="segkit-figure">
<img src="data:image/jpeg;base64,{{ output.data['image/jpeg'] | escape_html }}"
 alt="{{ output.metadata.get('segkit', {}).get('alt', 'figure') | escape_html }}">
<figcaption>{{ output.metadata.get('segkit', {}).get('caption', '') | escape_html }}</figcaption>
</figure>
</div>
{%- endblock data_jpg %}
"""


def web_image(data: bytes, max_side: int = MAX_SIDE, jpeg_above: int = JPEG_ABOVE
              ) -> tuple[str, bytes]:
    """(mime type, bytes) of a PNG re-encoded for a web page: scaled down so that its longest
    side is at most `max_side`, saved optimised (opaque RGBA as RGB), and, when that is still
    above `jpeg_above` bytes, as a JPEG if that takes less than half the bytes (photos and
    overlays; charts stay PNG). The original is kept when nothing makes it smaller, and
    without a try when it is at most `SMALL` bytes and `max_side` pixels."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    resized = max(image.size) > max_side
    if not resized and len(data) <= SMALL:
        return "image/png", data  # a chart: little to gain, and encoding takes time
    image.load()
    if resized:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)),
                              max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
    if image.mode == "RGBA" and image.getextrema()[3][0] == 255:
        image = image.convert("RGB")  # fully opaque: the alpha channel is dead weight
    elif image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
        image = image.convert("RGBA")
    out = io.BytesIO()
    image.save(out, "PNG", optimize=True)
    mime, best = "image/png", out.getvalue()
    if not resized and len(best) >= len(data):
        mime, best = "image/png", data
    if len(best) > jpeg_above:
        flat = image.convert("RGBA")
        background = Image.new("RGB", flat.size, "white")
        background.paste(flat, mask=flat.getchannel("A"))
        out = io.BytesIO()
        background.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True, progressive=True)
        if len(out.getvalue()) < len(best) / 2:
            mime, best = "image/jpeg", out.getvalue()
    return mime, best


_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")


def _first_comment(source: str) -> str:
    for line in source.splitlines():
        text = line.strip()
        if not text:
            continue
        if text.startswith("#") and not text.startswith("#!"):
            comment = text.lstrip("#").strip()
            if comment and not comment.lower().startswith(("noqa", "type:", "%%")):
                return comment
            continue
        if text.startswith("%"):  # a magic (%matplotlib inline) before the comment
            continue
        return ""
    return ""


_PLOT_CALL = re.compile(r"\b(?:viz|report|pseudo|eda|plt|sns)\.(\w+)\(")
_GENERIC_CALLS = {"subplots", "figure", "show", "tight_layout", "close", "savefig", "imshow",
                  "axis", "legend", "xlabel", "ylabel", "xticks", "yticks"}


def _what_is_drawn(source: str) -> str:
    """What a plotting cell draws, from its code: the name of its last plotting call
    (`viz.show_worst_images(...)` -> "worst images"; not a title, which may sit in a branch
    that did not run); '' when there is none."""
    calls = [c for c in _PLOT_CALL.findall(source)
             if c not in _GENERIC_CALLS and not c.startswith(("save", "write", "set_"))]
    if not calls:
        return ""
    name = re.sub(r"^(plot|show|draw|make)_", "", calls[-1])
    return name.replace("_", " ").strip()


def _plain(markdown: str) -> str:
    """A markdown heading as plain text (links, emphasis and code marks removed)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown)
    return re.sub(r"[*_`]", "", text).strip()


def caption_figures(nb) -> int:
    """Give every picture output of a notebook (nbformat node, changed in place) a caption and
    alt text in its metadata (`segkit.caption`, `segkit.alt`): the cell's first comment line,
    else the nearest markdown heading above it, numbered when a cell shows several. Returns
    the number of pictures."""
    heading, total = "", 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                match = _HEADING.match(line)
                if match:
                    heading = _plain(match.group(1))
            continue
        if cell.cell_type != "code":
            continue
        pictures = [o for o in cell.get("outputs", [])
                    if any(k in o.get("data", {}) for k in ("image/png", "image/jpeg"))]
        comment = _plain(_first_comment(cell.source))
        base = comment or heading or f"Output of cell {index + 1}"
        drawn = "" if comment else _what_is_drawn(cell.source)
        if drawn and drawn.lower() not in base.lower():
            base = f"{base}: {drawn}"
        for k, output in enumerate(pictures, 1):
            caption = base if len(pictures) == 1 else f"{base} ({k} of {len(pictures)})"
            # alt text: the caption, with the section it is in when that says more
            alt = f"{caption} ({heading})" if heading and heading not in caption else caption
            output.setdefault("metadata", {})["segkit"] = {"caption": caption, "alt": alt}
        total += len(pictures)
    return total


def shrink_figures(nb, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """Re-encode every PNG output of a notebook (in place) with `web_image`; returns the bytes
    of the pictures (decoded) before and after."""
    before = after = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = output.get("data", {})
            if "image/png" not in data:
                continue
            raw = base64.b64decode(data["image/png"])
            try:
                mime, encoded = web_image(raw, max_side)
            except Exception:  # noqa: BLE001 - an unreadable picture is shown as it is
                mime, encoded = "image/png", raw
            before, after = before + len(raw), after + len(encoded)
            text = base64.b64encode(encoded).decode("ascii")
            metadata = output.setdefault("metadata", {})
            metadata.pop("image/png", None)  # width / height of the original size
            if mime == "image/png":
                data["image/png"] = text
            else:
                del data["image/png"]
                data[mime] = text
    return before, after


def _failure(nb) -> str:
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") == "error":
                return (f"failed in cell {index + 1}: {output.get('ename', '')}: "
                        f"{output.get('evalue', '')}")
    return ""


def _index_link(report: Path) -> str:
    """The relative link from a report to outputs/index.html, or '' outside the outputs."""
    root = outputs_dir().resolve()
    try:
        report.resolve().relative_to(root)
    except ValueError:
        return ""
    return Path(os.path.relpath(root / "index.html", report.resolve().parent)).as_posix()


def _header(nb, source: Path, report: Path) -> str:
    papermill = nb.metadata.get("papermill", {}) or {}
    parameters = papermill.get("parameters") or {}
    title = f"{source.stem} <small>({html.escape(source.parent.name)})</small>"
    link = _index_link(report)
    rows = []
    if papermill.get("start_time"):
        rows.append(("ran", f"{str(papermill['start_time'])[:19].replace('T', ' ')} UTC"))
    if papermill.get("duration") is not None:
        rows.append(("took", f"{float(papermill['duration']):.1f} s"))
    rows.append(("notebook", str(source)))
    failed = _failure(nb)
    parts = ['<header class="segkit-header">']
    if link:
        parts.append(f'<nav><a href="{html.escape(link)}">all results (index)</a></nav>')
    parts.append(f"<h1>{title}</h1>")
    if failed:
        parts.append(f'<p class="segkit-failed">{html.escape(failed)}</p>')
    parts.append(_rows(rows))
    if parameters:  # as given to papermill; the rest are the notebook's defaults
        parts.append(f"<details><summary>parameters given ({len(parameters)})</summary>"
                     + _rows([(k, repr(v)) for k, v in parameters.items()]) + "</details>")
    parts.append("</header>")
    return "\n".join(parts)


def _rows(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                               for k, v in rows) + "</table>"


def report_path(executed: str | os.PathLike) -> Path:
    """Where the HTML report of an executed notebook goes: beside it, `.html`."""
    return Path(executed).with_suffix(".html")


def write_html_report(executed_ipynb: str | os.PathLike, output: str | os.PathLike | None = None,
                      max_side: int = MAX_SIDE) -> Path:
    """The executed notebook as one self-contained HTML file (module docstring), beside it
    unless `output` is given; written atomically. Returns its path."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    source = Path(executed_ipynb)
    target = Path(output) if output else report_path(source)
    nb = nbformat.read(str(source), as_version=4)
    nb.metadata.pop("widgets", None)  # widget state needs scripts from a CDN: progress bars
    for cell in nb.cells:  # (tqdm.auto) show as their text instead
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            out.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)
    shrink_figures(nb, max_side)
    caption_figures(nb)
    exporter = HTMLExporter(template_name="lab", embed_images=True,
                            extra_loaders=[jinja2.DictLoader({"segkit.html.j2": _TEMPLATE})],
                            template_file="segkit.html.j2")
    # markdown pictures are relative to the source notebook (papermill's input_path)
    given = Path(str((nb.metadata.get("papermill") or {}).get("input_path") or source))
    resources = {"metadata": {"name": source.stem,
                              "path": str((given if given.exists() else source).parent)},
                 "segkit_header": _header(nb, source, target)}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, body)
    return target


