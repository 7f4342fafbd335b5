"""Score CamVid runs, alone and as soft-vote ensembles, on their validation fold.

Each run's validation images are predicted (flip TTA, unless a matching prediction folder is
there) into outputs/predictions/<run>/val at the submission size (256x256); every single run
and every `+`-joined ensemble is scored against the truth at that size. Prints mIoU over all
label values and over the classes without the first (CamVid's void), and the per-class IoU.

    SEGKIT_OUTPUTS=outputs/camvid .venv/bin/python benchmarks/camvid/score_runs.py \\
        --data-root DATA --runs efficientnet_lite0_fold0_320 efficientnet_lite0_fold0 \\
        --ensembles efficientnet_lite0_fold0_320+efficientnet_lite0_fold0
"""

from __future__ import annotations

import argparse

from segkit.coco.files import load_coco
from segkit.core.classes import ClassTable
from segkit.predict.ensemble import score_ensembles, truth_at_size
from segkit.predict.options import PredictOptions
from segkit.predict.writing import predict_run
from segkit.results.run_lists import common_validation
from segkit.results.runs import Run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--runs", nargs="+", required=True, help="run names under outputs/runs")
    parser.add_argument("--ensembles", nargs="*", default=[], help="e.g. run_a+run_b")
    args = parser.parse_args()

    runs = [Run.open(name) for name in args.runs]
    _, val_json = common_validation(runs)
    coco = load_coco(val_json)
    classes = ClassTable.for_coco(coco.categories)
    folders = [predict_run(run, "val", PredictOptions(flips=["h"]), coco_file=val_json,
                           data_root=args.data_root) for run in runs]
    truth = truth_at_size(coco, classes, folders[0].size)
    # an equal-weight soft vote of the named members: weight 1 for them, 0 for the others
    soft = {e.replace("+", " + "): [float(name in e.split("+")) for name in args.runs]
            for e in args.ensembles}
    table = score_ensembles(folders, truth, args.runs, soft=soft).table

    per_class = table.drop(index="mIoU")
    print(f"| model | mIoU, {len(classes) - 1} classes | mIoU, {len(classes)} | "
          + " | ".join(classes.names) + " |")
    for column in table.columns:
        iou = per_class[column]
        print(f"| {column} | {iou.iloc[1:].mean():.4f} | {table.loc['mIoU', column]:.4f} | "
              + " | ".join(f"{x:.3f}" for x in iou) + " |")


if __name__ == "__main__":
    main()
