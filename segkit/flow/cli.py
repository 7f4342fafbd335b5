"""`python -m segkit COMMAND ...`: the command-line entry points.

Bad input exits with code 2 and one line naming the file and the entry (no traceback).
"""

from __future__ import annotations

import argparse
import sys

from segkit.core.errors import ParameterError, SegkitError


def _cmd_sample(args) -> int:
    from segkit.data.sample import make_sample

    root = make_sample(args.dir, n_train=args.n_train, n_test=args.n_test, size=args.size,
                       seed=args.seed)
    print(f"wrote the synthetic sample to {root}")
    return 0


def _cmd_check_coco(args) -> int:
    from segkit.coco.files import check_coco

    problems, warnings = check_coco(args.file, args.data_root,
                                    allow_outside_root=args.allow_outside_root)
    for w in warnings:
        print(f"warning: {w}")
    for p in problems:
        print(f"error: {p}")
    print(f"{args.file}: {len(problems)} problems, {len(warnings)} warnings")
    return 2 if problems else 0


def _cmd_split(args) -> int:
    from segkit.folds.split import split_file

    written = split_file(args.file, args.out, n_splits=args.n_splits, seed=args.seed, by=args.by,
                         group_by=args.group_by)
    grouped = f", grouped by {args.group_by}" if args.group_by else ""
    print(f"wrote {len(written)} files ({args.n_splits} folds, stratified by {args.by}{grouped}) "
          f"to {written[0].parent}")
    return 0


def _cmd_duplicates(args) -> int:
    from pathlib import Path

    from segkit.coco.files import load_coco
    from segkit.data.near_duplicates import clusters, near_duplicates

    coco = load_coco(args.file)
    root = Path(args.data_root) if args.data_root else coco.path.parent
    pairs = near_duplicates(coco, root, threshold=args.threshold, processes=args.processes)
    for row in pairs.itertuples(index=False):
        print(f"{row.image_a}\t{row.image_b}\t{row.file_a}\t{row.file_b}\t"
              f"phash {row.phash_distance}\tdhash {row.dhash_distance}")
    n_clusters = clusters(pairs)["cluster"].nunique()
    print(f"{len(pairs)} near-duplicate pairs (both hashes within {args.threshold} bits) in "
          f"{n_clusters} clusters among {len(coco.images)} images of {coco.path}")
    return 0


def _cmd_copy_paste(args) -> int:
    from segkit.coco.files import load_coco
    from segkit.data.copy_paste import copy_paste

    # `--images-per-class 20` for every class, or `Battery=50 Clothing=100`
    counts: int | dict[str, int]
    try:
        if len(args.images_per_class) == 1 and "=" not in args.images_per_class[0]:
            counts = int(args.images_per_class[0])
        else:
            counts = {k: int(v) for k, v in (t.split("=", 1) for t in args.images_per_class)}
    except ValueError:
        raise ParameterError(f"--images-per-class takes a number or CLASS=NUMBER pairs, got "
                             f"{' '.join(args.images_per_class)}") from None
    result = copy_paste(load_coco(args.file), args.data_root, name=args.name,
                        classes=args.classes, images_per_class=counts,
                        objects_per_image=args.objects_per_image,
                        scale_range=tuple(args.scale), rotation_range=tuple(args.rotation),
                        seed=args.seed, out_root=args.out_root)
    print(f"wrote {result.pasted['image_id'].nunique()} images to {result.data_root} "
          f"(COCO file {result.coco_file}; its file names are relative to {result.data_root})")
    return 0


def parse_assignments(items: list[str]) -> dict:
    """`key=value` pairs with YAML values: `iters=800 augment=[flip] amp=true`."""
    import yaml

    from segkit.core.errors import ParameterError

    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ParameterError(f"expected key=value, got {item!r}")
        params[key.replace("-", "_")] = yaml.safe_load(value) if value else None
    return params


def _cmd_train(args) -> int:
    from segkit.train.training import run

    result = run(**parse_assignments(args.params))  # every key checked before any work
    print(f"run folder: {result.work_dir}")
    print(f"best checkpoint: {result.best_checkpoint} (val mIoU {result.best_miou:.4f})")
    return 0


def predict_options(args):
    """The PredictOptions of `segkit predict` / `segkit oof` arguments."""
    from segkit.predict.options import PredictOptions

    return PredictOptions(checkpoint=args.checkpoint,
                          checkpoints=tuple(getattr(args, "checkpoints", ()) or ()),
                          flips=tuple(args.flips), scales=tuple(args.scales),
                          slide=args.slide, out_size=tuple(args.size),
                          reduction=args.reduction, amp=args.amp)


def _cmd_predict(args) -> int:
    from segkit.data.sample import resolve_data_root
    from segkit.predict.members import vote_checkpoints
    from segkit.predict.writing import predict_and_score

    root = resolve_data_root(args.data_root) if args.data_root else None
    options = predict_options(args)
    if args.images:  # a folder of images without annotations instead of the splits
        from segkit.predict.images import predict_images

        folder = predict_images(args.run, args.images, options, name=args.name,
                                submission=args.submission, batch_size=args.batch_size,
                                progress=True)
        print(f"{len(folder.meta['images'])} images of {args.images}: label maps and "
              f"probabilities in {folder.path}"
              + (f"; submission: {folder.submission}" if args.submission else ""))
        return 0
    done = predict_and_score(args.run, options, args.splits, val_file=args.val_file,
                             test_file=args.test_file, data_root=root, name=args.name,
                             batch_size=args.batch_size, progress=True,
                             decisions=args.decisions)
    if done.evaluation is not None:
        print(done.evaluation.per_class.round(4).to_string())
        print(f"validation mIoU {done.evaluation.miou:.4f} on "
              f"{len(done.evaluation.per_image)} images; predictions in {done.val.path}")
    if done.test is not None:
        print(f"submission: {done.submission} (valid for {args.test_file})"
              + (f"; local score in {done.score_file}" if done.score_file else ""))
    if done.decided is not None:
        print(f"submission with the decisions of {args.decisions}: {done.decided}")
    if options.checkpoints:
        vote = vote_checkpoints(done.run, options, test_file=args.test_file, data_root=root,
                                name=args.name)
        print(vote.table.round(4).to_string())
        print(f"submission of the checkpoint vote: {vote.submission}")
    return 0


def _cmd_pipeline(args) -> int:
    from segkit.flow.pipeline import run_pipeline

    options = {k: v for k, v in (("partition", args.partition),
                                 ("gpus_per_job", args.gpus_per_job), ("time", args.time),
                                 ("cpus_per_job", args.cpus_per_job)) if v is not None}
    executed = run_pipeline(args.spec, parse_assignments(args.params), kernel=args.kernel,
                            parallel=args.parallel, executor=args.executor,
                            executor_options=options)
    for path in executed:
        print(f"executed: {path}")
    return 0


def _cmd_oof(args) -> int:
    from segkit.predict.cv import out_of_fold

    result = out_of_fold(args.runs, predict_options(args), name=args.name,
                         partial=args.partial)
    print(result.report())
    return 0


def _cmd_demo(args) -> int:
    from segkit.flow.pipeline import run_demo

    run_demo()
    return 0


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help shows its default (where it has one); epilogs keep their line
    breaks."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        if action.default not in (None, "", [], argparse.SUPPRESS, False) and \
                "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def add_command(sub, name: str, func, help: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand `name` running `func(args)` (an exit code), every default shown in its
    help. Command groups in other modules (segkit.flow.cli_*) add theirs with it."""
    parser = sub.add_parser(name, help=help, description=help, formatter_class=_Formatter,
                            **kwargs)
    parser.set_defaults(func=func)
    return parser


def _data_commands(sub) -> None:
    p = add_command(sub, "sample", _cmd_sample, "write the synthetic sample dataset")
    p.add_argument("dir", help="the folder to write it into")
    p.add_argument("--n-train", type=int, default=80, help="training images")
    p.add_argument("--n-test", type=int, default=20, help="test images")
    p.add_argument("--size", type=int, default=512, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed")

    p = add_command(sub, "check-coco", _cmd_check_coco,
                 "validate a COCO file (and its images) and list problems")
    p.add_argument("file", help="the annotation file")
    p.add_argument("--data-root", default=None, help="folder the file_name entries are "
                                                     "relative to (checks the images too)")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="accept file names that leave the data root (../, absolute paths)")

    p = add_command(sub, "split", _cmd_split, "StratifiedGroupKFold folds of a COCO file "
                 "(fold{k}_train.json / fold{k}_val.json)")
    p.add_argument("file", help="the annotation file to split, e.g. train_all.json")
    p.add_argument("--out", default=None, help="output folder (default: outputs/splits)")
    p.add_argument("--n-splits", type=int, default=5, help="number of folds")
    p.add_argument("--seed", type=int, default=42, help="random seed")
    p.add_argument("--by", choices=["annotations", "pixels"], default="annotations",
                   help="stratify annotation counts or pixel shares per class")
    p.add_argument("--group-by", default=None,
                   help="keep each group in one fold: regex:PATTERN (on the file's base name, "
                        "e.g. 'regex:^(\\w+?)_'), field:NAME (an image field, e.g. "
                        "field:video_id) or frames:GAP (runs of frame numbers); none: the "
                        "image")

    p = add_command(sub, "duplicates", _cmd_duplicates, "print the near-duplicate image pairs of "
                 "a COCO file (perceptual hashes, cached)")
    p.add_argument("file", help="the annotation file, e.g. train_all.json")
    p.add_argument("--data-root", default=None,
                   help="folder the file_name entries are relative to (default: the file's)")
    p.add_argument("--threshold", type=int, default=10,
                   help="most differing bits of 64, for both pHash and dHash")
    p.add_argument("--processes", type=int, default=2, help="hashing processes")

    p = add_command(sub, "copy-paste", _cmd_copy_paste, "paste rare-class instances onto "
                 "background-heavy images; writes outputs/copy_paste/NAME/")
    p.add_argument("file", help="the training annotation file, e.g. "
                                "outputs/splits/fold0_train.json")
    p.add_argument("--data-root", required=True, help="folder the file's file_name entries "
                                                      "are relative to")
    p.add_argument("--name", default="default", help="the output folder's name")
    p.add_argument("--classes", nargs="+", default=["Battery", "Clothing"],
                   help="the classes to paste")
    p.add_argument("--images-per-class", nargs="+", default=["10"],
                   help="a number, or CLASS=NUMBER pairs")
    p.add_argument("--objects-per-image", type=int, default=2, help="pasted objects per image")
    p.add_argument("--scale", type=float, nargs=2, default=[0.75, 1.25],
                   metavar=("LOW", "HIGH"), help="random scale range")
    p.add_argument("--rotation", type=float, nargs=2, default=[-30.0, 30.0],
                   metavar=("LOW", "HIGH"), help="random rotation range, degrees")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out-root", default=None, help="default: outputs/copy_paste")


def _model_commands(sub) -> None:
    from segkit.recipe.parameters import help_text

    p = add_command(sub, "train", _cmd_train, "train a model from KEY=VALUE training parameters "
                 "(under torchrun for several GPUs)",
                 epilog="training parameters (KEY, default, meaning):\n" + help_text())
    p.add_argument("params", nargs="*", metavar="KEY=VALUE",
                   help="e.g. fold=3 model=upernet_swin_l iters=80000 data_root=/data/trash")

    p = add_command(sub, "predict", _cmd_predict, "predict a run's validation fold (scored) and "
                 "the test images (submission CSV), as 05_predict does")
    p.add_argument("run", help="a run folder, or a run name under outputs/runs")
    p.add_argument("--splits", nargs="+", choices=["val", "test"], default=["val", "test"],
                   help="what to predict")
    p.add_argument("--data-root", default=None, help="default: the data the run was trained on")
    p.add_argument("--test-file", default="test.json", help="relative to the data root")
    p.add_argument("--val-file", default=None, help="default: the run's validation file")
    p.add_argument("--checkpoints", nargs="+", default=[], metavar="CKPT",
                   help="several checkpoints soft-voted too, e.g. best 400 500 (05's "
                        "checkpoints; the vote's submission lands beside the run's)")
    p.add_argument("--name", default="", help="outputs/predictions/NAME/ (default: the run's)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument("--decisions", default=None, metavar="FILE",
                   help="a decisions.json (segkit decide on the run's recipe) applied to the "
                        "test probabilities: outputs/predictions/NAME/decided.csv")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="predict every JPEG / PNG under DIR (no annotations) instead of the "
                        "splits: label maps and probabilities in outputs/predictions/NAME/"
                        "images_DIRNAME (the folder itself is only read)")
    p.add_argument("--submission", action="store_true",
                   help="with --images: a submission CSV of them too (file names relative to "
                        "DIR, label maps at --size)")
    _prediction_arguments(p)


def _prediction_arguments(p) -> None:
    """The options of segkit.predict.options.PredictOptions, as 05_predict names them."""
    p.add_argument("--checkpoint", default="best",
                   help="best | last | an iteration | a checkpoint file")
    p.add_argument("--flips", nargs="*", default=["h"], choices=["h", "v"],
                   help="flip TTA (none: --flips with no value)")
    p.add_argument("--scales", nargs="+", type=float, default=[1.0], help="TTA scale factors")
    p.add_argument("--slide", type=int, nargs=2, default=None, metavar=("CROP", "STRIDE"),
                   help="sliding-window inference (default: whole images)")
    p.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"),
                   help="the submission's label map size (05's out_size)")
    p.add_argument("--reduction", default="probs", choices=["probs", "nearest", "max2x2"],
                   help="full-size labels to the submission size: resize probabilities then "
                        "argmax (probs), or shrink the label map")
    p.add_argument("--amp", action="store_true", help="fp16 on GPU, bf16 on CPU")


def _flow_commands(sub) -> None:
    p = add_command(sub, "pipeline", _cmd_pipeline,
                 "run notebooks in sequence from a YAML spec (papermill)")
    p.add_argument("spec", help="e.g. notebooks/demo.yaml")
    p.add_argument("params", nargs="*", metavar="KEY=VALUE",
                   help="shared parameters overriding the spec's, e.g. data_root=/data/trash")
    p.add_argument("--kernel", default="python3",
                   help="the Jupyter kernel the notebooks run in (e.g. segkit)")
    p.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="run up to N notebooks of a fanned-out step (foreach) at once, each "
                        "on a GPU of its own (default: one per GPU; 1 on a CPU machine)")
    p.add_argument("--executor", choices=["inline", "local", "slurm"], default=None,
                   help="where fanned-out steps run: here one by one (inline), as local "
                        "processes (local) or as Slurm jobs via submitit (slurm); default: "
                        "inline, or local with --parallel above 1")
    p.add_argument("--partition", default=None, help="Slurm partition (spec: executor:)")
    p.add_argument("--gpus-per-job", type=int, default=None, help="GPUs of each Slurm job")
    p.add_argument("--cpus-per-job", type=int, default=None, help="CPU cores of each job")
    p.add_argument("--time", type=int, default=None, metavar="MINUTES",
                   help="time limit of each job in minutes")

    p = add_command(sub, "oof", _cmd_oof, "out-of-fold score of one recipe's fold runs: OOF "
                 "mIoU, per-class IoU, per-fold mIoU with mean and std")
    p.add_argument("runs", nargs="+", help="the fold runs (folders or names under "
                                           "outputs/runs), one per fold of one split")
    p.add_argument("--name", default="", help="outputs/oof/NAME (default: the recipe's)")
    p.add_argument("--partial", action="store_true",
                   help="score folds that leave images of their split out (1 of 3 folds): "
                        "refused without it; the score then says N of M images")
    _prediction_arguments(p)

    add_command(sub, "demo", _cmd_demo, "the whole flow on the embedded synthetic sample")


# command groups in modules of their own, each with add_commands(sub)
COMMAND_GROUPS = ("segkit.flow.cli_submission", "segkit.flow.cli_decide",
                  "segkit.flow.cli_model_io", "segkit.flow.cli_reports", "segkit.flow.cli_search")


def build_parser() -> argparse.ArgumentParser:
    import importlib
    from importlib.metadata import version

    parser = argparse.ArgumentParser(prog="segkit", description=__doc__.splitlines()[0],
                                     formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"segkit {version('segkit')}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _data_commands(sub)
    _model_commands(sub)
    _flow_commands(sub)
    for group in COMMAND_GROUPS:
        importlib.import_module(group).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SegkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
