"""`segkit index`, `segkit report` and `segkit fiftyone`: results to look at in a browser,
without Jupyter."""

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


def _cmd_fiftyone(args) -> int:
    from segkit.core.paths import outputs_dir
    from segkit.data.sample import resolve_data_root
    from segkit.results.fiftyone_view import (
        fiftyone_dataset,
        folder_data_root,
        import_fiftyone,
        prediction_folders,
    )

    folders = prediction_folders(args.predictions, args.split)
    splits = args.splits_dir or outputs_dir() / "splits"
    dataset = fiftyone_dataset(
        folders, resolve_data_root(args.data_root) if args.data_root
        else folder_data_root(folders[0]), coco_file=args.coco_file, name=args.name,
        splits_dir=splits, pseudo_dir=args.pseudo, duplicates=not args.no_duplicates,
        update=args.update)
    models = ", ".join(dataset.info["models"])
    print(f"FiftyOne dataset {dataset.name!r}: {len(dataset)} images, models {models}; "
          f"saved views: {', '.join(dataset.list_saved_views()) or 'none'}")
    if args.launch:
        session = import_fiftyone().launch_app(dataset, port=args.port, address=args.address,
                                               auto=False)
        print(f"FiftyOne App on http://{args.address}:{args.port}/ (Ctrl-C ends it)")
        session.wait()
    else:
        print(f"open it: segkit fiftyone {' '.join(map(str, args.predictions))} --launch, or "
              f"fiftyone app launch {dataset.name}")
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

    p = add_command(sub, "fiftyone", _cmd_fiftyone, "prediction folders as a FiftyOne dataset: "
                    "ground truth, each model's predictions, per-image mIoU and per-class IoU, "
                    "fold, near-duplicate cluster, disagreement; saved views (extra: fiftyone)")
    p.add_argument("predictions", nargs="+", metavar="RUN_OR_PREDICTIONS",
                   help="run names (their outputs/predictions/RUN/SPLIT) or prediction folders")
    p.add_argument("--split", default="val", help="the split of run names (default: val)")
    p.add_argument("--data-root", default="", help="the folder the images' file names are "
                   "relative to (default: the first run's data root)")
    p.add_argument("--coco-file", default=None,
                   help="ground truth (default: the COCO file the folder was predicted from)")
    p.add_argument("--splits-dir", default=None,
                   help="folds, for each image's fold (default: outputs/splits)")
    p.add_argument("--pseudo", default=None, help="a pseudo-label folder (06), for each "
                   "image's kept share")
    p.add_argument("--no-duplicates", action="store_true",
                   help="skip the near-duplicate clusters (hashing every image)")
    p.add_argument("--name", default="", help="the dataset's name (default: RUN_SPLIT)")
    p.add_argument("--update", action="store_true", help="add to the dataset of that name: "
                   "rebuilt from its recorded folders and these")
    p.add_argument("--launch", action="store_true", help="open it in the FiftyOne App")
    p.add_argument("--port", type=int, default=5151, help="the App's port")
    p.add_argument("--address", default="localhost",
                   help="the App's address (0.0.0.0: reachable from other machines)")
