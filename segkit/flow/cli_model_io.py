"""`segkit export`: a run's model as a TorchScript or ONNX file (segkit.predict.export)."""

from __future__ import annotations


def _cmd_export(args) -> int:
    from segkit.predict.export import export_run

    exported = export_run(args.run, args.format, checkpoint=args.checkpoint, out=args.out,
                          size=tuple(args.size) if args.size else None,
                          check_images=args.check_images)
    check = exported.check
    print(f"wrote {exported.path} and {exported.info_path.name} (input normalisation, size, "
          f"classes)")
    print(f"checked against the run's model on {check['images']} images ({check['source']}): "
          f"max |probability difference| {check['max_abs_prob_diff']:.2g} (tolerance "
          f"{check['tolerance']:g}), max |output difference| "
          f"{check['max_abs_output_diff']:.2g}")
    return 0


def add_commands(sub) -> None:
    from segkit.flow.cli import add_command

    p = add_command(
        sub, "export", _cmd_export,
        "export a run's model as one file (TorchScript, or ONNX with the export extra) at a "
        "fixed input size, its input normalisation beside it as JSON, checked against the run",
        epilog="The file takes one normalised RGB image (1, 3, H, W) and returns class scores "
               "(1, C, H, W): logits (Mask2Former: non-negative scores). FILE.json gives mean, "
               "std, size and classes. The check runs the file on up to --check-images "
               "validation images beside the run's model: the largest absolute difference of "
               "the class probabilities must be at most 1e-5 (Mask2Former: where its scores "
               "sum to >= 1e-3, and the scores themselves within 1e-5), else nothing is "
               "written; the raw outputs' difference is printed too.")
    p.add_argument("run", help="a run folder, or a run name under outputs/runs")
    p.add_argument("--format", choices=["onnx", "torchscript"], required=True,
                   help="torchscript (.pt, torch alone) or onnx (.onnx: pip install "
                        "'segkit[export]')")
    p.add_argument("--checkpoint", default="best",
                   help="best | last | an iteration | a checkpoint file")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="the file (.pt or .onnx); default outputs/exports/RUN/CHECKPOINT.pt|onnx")
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="the fixed input size (default: the run's validation scale)")
    p.add_argument("--check-images", type=int, default=4, metavar="N",
                   help="validation images the export is checked on")
