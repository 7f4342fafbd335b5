"""outputs/index.html: every result under the outputs folder on one page, with links to the
HTML reports of the executed notebooks (segkit.flow.reports).

Sections, each newest first: pipeline reports (outputs/pipelines/<spec>/), training runs
(outputs/runs/<run>/: model, fold, iterations, best validation mIoU, its 04_train report and the
reports of the notebooks that used it), prediction folders (outputs/predictions/<name>/<split>/),
ensembles (outputs/ensembles/*.csv with their local score), out-of-fold scores
(outputs/oof/<recipe>/score.json), public-leaderboard entries (outputs/leaderboard.jsonl) and
search studies (outputs/search/<study>/). One self-contained file (inline CSS, no script),
relative links only, so the outputs folder can be copied or served as it is.

Written at the end of every pipeline and by `python -m segkit index`.

Example:
    write_index()   # -> outputs/index.html
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from segkit.core.paths import outputs_dir, write_text_atomic
from segkit.flow.reports import write_html_report

# notebook parameters that name runs (a run folder's name or path)
_RUN_PARAMETERS = ("run_dir", "run_dirs", "runs", "curve_runs", "error_run", "run_name")

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em;
  color: #222; max-width: 1400px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
.failed { color: #b00020; font-weight: bold; }
.muted { color: #777; }
"""


@dataclass
class Report:
    """An executed notebook with its HTML report (when written)."""

    notebook: Path
    html: Path | None
    parameters: dict = field(default_factory=dict)
    failed: bool = False
    time: float = 0.0

    @property
    def name(self) -> str:
        return self.notebook.stem

    def runs(self) -> set[str]:
        """The names of the runs its parameters name."""
        names = set()
        for key in _RUN_PARAMETERS:
            value = self.parameters.get(key)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str) and item:
                    names.add(Path(item.rstrip("/")).name)
        return names


def _read_report(notebook: Path) -> Report:
    page = notebook.with_suffix(".html")
    try:
        meta = json.loads(notebook.read_text(encoding="utf-8")).get("metadata", {})
        papermill = meta.get("papermill") or {}
    except (OSError, ValueError):
        papermill = {}
    return Report(notebook, page if page.exists() else None,
                  papermill.get("parameters") or {}, bool(papermill.get("exception")),
                  _mtime(page if page.exists() else notebook))


def executed_notebooks(root: Path | None = None) -> list[Path]:
    """Executed notebooks under the outputs folder: the pipelines', the runs' 04_train and the
    search studies' (their trials' runs)."""
    root = root or outputs_dir()
    found = [p for folder in ("pipelines", "search") for p in (root / folder).rglob("*.ipynb")
             if "jobs" not in p.parts and ".ipynb_checkpoints" not in p.parts]
    found += list((root / "runs").glob("*/*.ipynb"))
    return sorted(found)


def _mentions(notebook: Path, text: str) -> bool:
    """Whether an executed notebook names `text` anywhere (its outputs print what they wrote)."""
    try:
        return text in notebook.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M") if seconds else ""


def _number(value, digits: int = 4) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(value) else f"{value:.{digits}f}"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class _Page:
    """Relative links from outputs/index.html, and the HTML of the tables."""

    def __init__(self, root: Path):
        self.root = root.resolve()

    def href(self, path: Path, folder: bool = False) -> str:
        relative = os.path.relpath(Path(path).resolve(), self.root)
        return quote(Path(relative).as_posix(), safe="/") + ("/" if folder else "")

    def link(self, path: Path, text: str, folder: bool = False) -> str:
        return f'<a href="{html.escape(self.href(path, folder))}">{html.escape(text)}</a>'

    def report_links(self, reports: list[Report]) -> str:
        return " ".join(self.link(r.html, f"{r.name} ({r.notebook.parent.name})")
                        for r in sorted(reports, key=lambda r: -r.time) if r.html)


def _table(section: str, title: str, columns: list[str], rows: list[list[str]],
           numeric: tuple[str, ...] = (), empty: str = "none yet") -> str:
    """A section: its heading and a table (cells are HTML already); numeric columns right."""
    head = f'<h2 id="{section}">{html.escape(title)} <span class="muted">({len(rows)})</span></h2>'
    if not rows:
        return head + f'<p class="muted">{html.escape(empty)}</p>'
    header = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(
        f'<td class="num">{cell}</td>' if column in numeric else f"<td>{cell}</td>"
        for column, cell in zip(columns, row)) + "</tr>" for row in rows)
    return f"{head}<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _pipelines(page: _Page, reports: list[Report], root: Path) -> str:
    rows = []
    for r in sorted(reports, key=lambda r: -r.time):
        if "pipelines" not in r.notebook.relative_to(root).parts[:1]:
            continue
        status = '<span class="failed">failed</span>' if r.failed else "ok"
        shown = {k: v for k, v in r.parameters.items() if k != "data_root"}
        rows.append([_when(r.time), html.escape(r.notebook.parent.name),
                     page.link(r.html, r.name) if r.html else
                     html.escape(r.name) + ' <span class="muted">(no HTML report)</span>',
                     status, html.escape(", ".join(f"{k}={v}" for k, v in shown.items()))])
    return _table("pipelines", "Pipeline reports",
                  ["time", "pipeline", "report", "status", "parameters"], rows)


def _runs(page: _Page, reports: list[Report], root: Path) -> str:
    rows = []
    for folder in sorted(p for p in (root / "runs").glob("*") if p.is_dir()):
        params = _read_json(folder / "params.json")
        if not params:
            continue
        summary = _read_json(folder / "summary.json")
        best = summary.get("best_miou")
        if best is None:
            try:
                from segkit.results.runs import Run

                best = Run(folder).summary().best_miou
            except Exception:  # noqa: BLE001 - an unreadable log shows as no score
                best = None
        own = [r for r in reports if r.notebook.parent == folder]
        used = [r for r in reports if r.notebook.parent != folder and folder.name in r.runs()]
        seconds = summary.get("seconds")
        when = _mtime(folder / "summary.json") or _mtime(folder / "params.json")
        rows.append((when, [
            _when(when), page.link(folder, folder.name, folder=True),
            html.escape(str(params.get("model", ""))),
            html.escape("" if params.get("fold") is None else str(params["fold"])),
            html.escape(str(params.get("iters", ""))), _number(best),
            _number(float(seconds) / 60, 1) if seconds is not None else "",
            ("" if summary else '<span class="muted">unfinished</span> ')
            + page.report_links(own), page.report_links(used)]))
    rows.sort(key=lambda r: -r[0])
    return _table("runs", "Training runs",
                  ["time", "run", "model", "fold", "iters", "best val mIoU", "minutes",
                   "report", "used by"], [r for _, r in rows],
                  numeric=("iters", "best val mIoU", "minutes"))


def _predictions(page: _Page, reports: list[Report], root: Path) -> str:
    rows = []
    for meta_file in (root / "predictions").glob("*/*/meta.json"):
        folder = meta_file.parent
        meta = _read_json(meta_file)
        score = _read_json(folder / "submission.csv.score.json")
        run = folder.parent.name.split("@")[0]
        when = _mtime(meta_file)
        tta = ", ".join(f"{k} {meta[k]}" for k in ("flips", "scales", "slide")
                        if meta.get(k) not in (None, [], ""))
        rows.append((when, [
            _when(when), page.link(folder, f"{folder.parent.name}/{folder.name}", folder=True),
            html.escape(str(meta.get("split", folder.name))),
            str(len(meta.get("images", []))), html.escape(tta),
            html.escape(Path(str(meta.get("checkpoint", ""))).name),
            _number(score.get("score")) + (f' <span class="muted">'
                                           f'{html.escape(str(score.get("kind", "")))}</span>'
                                           if score else ""),
            page.report_links([r for r in reports if run in r.runs()])]))
    rows.sort(key=lambda r: -r[0])
    return _table("predictions", "Prediction folders",
                  ["time", "folder", "split", "images", "TTA", "checkpoint", "local score",
                   "reports"], [r for _, r in rows], numeric=("images",))


def _ensembles(page: _Page, reports: list[Report], root: Path) -> str:
    rows = []
    for csv in (root / "ensembles").glob("*.csv"):
        score = _read_json(csv.with_name(csv.name + ".score.json"))
        when = _mtime(csv)
        made_by = [r for r in reports if r.name.startswith("07_ensemble") and (
            r.parameters.get("name") == csv.stem or _mentions(r.notebook, csv.name))]
        rows.append((when, [_when(when), html.escape(csv.name), _number(score.get("score")),
                            html.escape(str(score.get("kind", ""))),
                            page.report_links(made_by)]))
    rows.sort(key=lambda r: -r[0])
    return _table("ensembles", "Ensembles",
                  ["time", "submission", "local score", "score kind", "report"],
                  [r for _, r in rows], numeric=("local score",))


def _oof(page: _Page, root: Path) -> str:
    rows = []
    for score_file in (root / "oof").glob("*/score.json"):
        score = _read_json(score_file)
        when = _mtime(score_file)
        rows.append((when, [
            _when(when), page.link(score_file.parent, score_file.parent.name, folder=True),
            _number(score.get("OOF mIoU")),
            f"{_number(score.get('mean mIoU'))} &plusmn; {_number(score.get('std'))}"
            if "mean mIoU" in score else "",
            html.escape(str(score.get("folds", ""))), html.escape(str(score.get("images", ""))),
            html.escape(str(score.get("per-fold mIoU", "")))]))
    rows.sort(key=lambda r: -r[0])
    return _table("oof", "Out-of-fold scores",
                  ["time", "recipe", "OOF mIoU", "mean ± std of folds", "folds", "images",
                   "per fold"], [r for _, r in rows],
                  numeric=("OOF mIoU", "folds", "images"))


def _leaderboard(root: Path) -> str:
    from segkit.core.errors import SegkitError
    from segkit.submission.leaderboard import leaderboard_table

    try:
        table = leaderboard_table(root / "leaderboard.jsonl")
    except SegkitError as exc:
        return _table("leaderboard", "Leaderboard", [], [], empty=str(exc))
    rows = []
    for entry in table.sort_values("time", ascending=False).to_dict("records") \
            if len(table) else []:
        shown = Path(str(entry["submission"]))
        if shown.is_absolute() and shown.resolve().is_relative_to(root.resolve()):
            shown = shown.resolve().relative_to(root.resolve())  # the outputs folder's
        rows.append([html.escape(str(entry["time"]).replace("T", " ")),
                     html.escape(str(shown)), html.escape(str(entry["note"])),
                     _number(entry["leaderboard"]), _number(entry["local"]),
                     html.escape(str(entry["local kind"])), _number(entry["gap"])])
    return _table("leaderboard", "Leaderboard entries",
                  ["time (UTC)", "submission", "note", "leaderboard", "local", "local kind",
                   "gap"], rows, numeric=("leaderboard", "local", "gap"))


def _search(page: _Page, root: Path) -> str:
    rows = []
    for folder in sorted(p for p in (root / "search").glob("*") if p.is_dir()):
        files = [p for p in folder.rglob("*") if p.is_file()]
        when = max((_mtime(p) for p in files), default=_mtime(folder))
        pages = sorted((p for p in files if p.suffix == ".html"), key=lambda p: -_mtime(p))
        best = ""
        for p in files:
            if p.suffix == ".json":
                data = _read_json(p)
                if "best_value" in data:
                    best = _number(data["best_value"])
                    break
        shown = " ".join(page.link(p, str(p.relative_to(folder))) for p in pages[:5])
        if len(pages) > 5:
            shown += f' <span class="muted">and {len(pages) - 5} more in the folder</span>'
        rows.append((when, [_when(when), page.link(folder, folder.name, folder=True),
                            str(len(files)), best, shown]))
    rows.sort(key=lambda r: -r[0])
    return _table("search", "Search studies", ["time", "study", "files", "best value", "reports"],
                  [r for _, r in rows], numeric=("files", "best value"))


SECTIONS = {"pipelines": "Pipeline reports", "runs": "Training runs",
            "predictions": "Prediction folders", "ensembles": "Ensembles",
            "oof": "Out-of-fold scores", "leaderboard": "Leaderboard", "search": "Search studies"}


def write_index(root: str | os.PathLike | None = None, write_reports: bool = False) -> Path:
    """Write `<outputs>/index.html` (module docstring) and return its path. With
    `write_reports`, executed notebooks without an up-to-date HTML report get one first
    (segkit.flow.reports.write_html_report)."""
    root = Path(root) if root else outputs_dir()
    root.mkdir(parents=True, exist_ok=True)
    notebooks = executed_notebooks(root)
    if write_reports:

        for notebook in notebooks:
            page = notebook.with_suffix(".html")
            if _mtime(page) < _mtime(notebook):
                write_html_report(notebook)
    reports = [_read_report(p) for p in notebooks]
    page = _Page(root)
    body = [_pipelines(page, reports, root), _runs(page, reports, root),
            _predictions(page, reports, root), _ensembles(page, reports, root),
            _oof(page, root), _leaderboard(root), _search(page, root)]
    nav = " ".join(f'<a href="#{key}">{html.escape(title)}</a>' for key, title in SECTIONS.items())
    text = "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>segkit results</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        "<h1>segkit results</h1>",
        f'<p class="muted">{html.escape(str(root.resolve()))}, written '
        f"{datetime.now().strftime('%Y-%m-%d %H:%M')}; newest first</p>",
        f"<nav>{nav}</nav>", *body, "</body>", "</html>", ""])
    target = root / "index.html"
    write_text_atomic(target, text)
    return target


def write_pipeline_reports(executed: list[str | os.PathLike], since: float = 0.0,
                           index: bool = True) -> list[Path]:
    """After a pipeline step: the HTML report of each of its executed notebooks written since
    `since` (a time.time(); failed ones too: their copy keeps the traceback), then
    outputs/index.html. A report that cannot be written is a warning, never the pipeline's
    failure. Returns the reports written."""
    import warnings

    written = []
    for notebook in map(Path, executed):
        try:
            if notebook.exists() and notebook.stat().st_mtime >= since:
                written.append(write_html_report(notebook))
        except Exception as exc:  # noqa: BLE001 - the notebook ran; its report is a bonus
            warnings.warn(f"{notebook}: no HTML report ({type(exc).__name__}: {exc})",
                          stacklevel=2)
    if index:
        try:
            write_index()
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"{outputs_dir() / 'index.html'} not written "
                          f"({type(exc).__name__}: {exc})", stacklevel=2)
    return written
