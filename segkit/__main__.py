"""`python -m segkit COMMAND ...`: the command-line entry points.

Bad input exits with code 2 and one line naming the file and the entry (no traceback).
"""

from __future__ import annotations

import argparse
import sys

from segkit.errors import SegkitError


def _cmd_sample(args) -> int:
    from segkit.sample import make_sample

    root = make_sample(args.dir, n_train=args.n_train, n_test=args.n_test, size=args.size,
                       seed=args.seed)
    print(f"wrote the synthetic sample to {root}")
    return 0


def _cmd_check_coco(args) -> int:
    from segkit.coco import check_coco

    problems, warnings = check_coco(args.file, args.data_root)
    for w in warnings:
        print(f"warning: {w}")
    for p in problems:
        print(f"error: {p}")
    print(f"{args.file}: {len(problems)} problems, {len(warnings)} warnings")
    return 2 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m segkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="write the synthetic sample dataset")
    p.add_argument("dir")
    p.add_argument("--n-train", type=int, default=80)
    p.add_argument("--n-test", type=int, default=20)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("check-coco", help="validate a COCO file (and its images) and list problems")
    p.add_argument("file")
    p.add_argument("--data-root", default=None, help="folder the file_name entries are relative to")
    p.set_defaults(func=_cmd_check_coco)

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
