"""`segkit index` and `segkit report`: results to read in a browser, without Jupyter."""

from __future__ import annotations

from segkit.flow.cli import add_command


def _cmd_index(args) -> int:
    from segkit.flow.index import write_index

    path = write_index(write_reports=not args.no_reports)
    print(f"wrote {path} (open it in a browser: file://{path.resolve()})")
    return 0


def _cmd_report(args) -> int:
    from pathlib import Path

    from segkit.core.errors import SegkitError
    from segkit.flow.reports import write_html_report

    for notebook in args.notebooks:
        if not Path(notebook).is_file():
            raise SegkitError(f"{notebook}: no such executed notebook")
        print(f"wrote {write_html_report(notebook)}")
    return 0


def add_commands(sub) -> None:
    p = add_command(sub, "index", _cmd_index, "write outputs/index.html: every run, prediction "
                    "folder, ensemble, OOF score, leaderboard entry and search study, newest "
                    "first, with links to the notebooks' HTML reports")
    p.add_argument("--no-reports", action="store_true",
                   help="do not write the missing or outdated HTML reports of executed "
                        "notebooks first")

    p = add_command(sub, "report", _cmd_report, "write an executed notebook as a "
                    "self-contained HTML report beside it (pictures embedded, sized for the "
                    "web)")
    p.add_argument("notebooks", nargs="+", metavar="NOTEBOOK.ipynb",
                   help="executed notebooks, e.g. outputs/pipelines/demo/05_predict.ipynb")
