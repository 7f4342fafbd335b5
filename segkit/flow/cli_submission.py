"""The submission commands: check-submission, ensemble (hard and soft votes) and lb (a
public-leaderboard score recorded beside a submission)."""

from __future__ import annotations

from segkit.core.errors import ParameterError


def _cmd_check_submission(args) -> int:
    from segkit.submission.files import validate_submission

    problems = validate_submission(args.csv, args.test_json, args.num_classes, tuple(args.size))
    for p in problems:
        print(f"error: {p}")
    if problems:
        print(f"{args.csv}: {len(problems)} problems")
        return 2
    print(f"{args.csv}: OK, matches {args.test_json}")
    return 0


def _cmd_ensemble(args) -> int:
    from segkit.submission.vote import hard_vote

    # `--weights 1 2 a.csv b.csv`: the numbers are weights, the rest inputs.
    weights, inputs = None, list(args.inputs)
    if args.weights is not None:
        weights = []
        for k, token in enumerate(args.weights):
            try:
                weights.append(float(token))
            except ValueError:
                inputs = args.weights[k:] + inputs
                break
    if not inputs:
        raise ParameterError("ensemble needs input submissions or prediction folders")
    from segkit.core.paths import distinct_paths

    inputs = distinct_paths(inputs, "ensemble inputs")  # `A` and `A/../A` are one input
    if len(inputs) < 2:
        what = "submissions" if args.method == "hard" else "prediction folders"
        raise ParameterError(f"a {args.method} vote needs at least 2 {what}, got {len(inputs)}")
    if args.method == "hard":
        out = hard_vote(inputs, args.out, weights, args.num_classes, tuple(args.size))
    else:  # probabilities: the prediction layer (the hard vote needs only the submission one)
        from segkit.predict.ensemble import write_ensemble_submission

        out = write_ensemble_submission(inputs, args.out, "soft", weights)
    print(f"wrote the {args.method} vote of {len(inputs)} inputs to {out}")
    return 0


def _cmd_lb(args) -> int:
    from segkit.submission.leaderboard import leaderboard_file, record_score

    entry = record_score(args.submission, args.score, args.note)
    print(f"recorded leaderboard score {entry['score']} of {entry['submission']} "
          f"(sha256 {entry['sha256'][:12]}) in {leaderboard_file()}")
    return 0


def add_commands(sub) -> None:
    from segkit.flow.cli import add_command

    p = add_command(sub, "check-submission", _cmd_check_submission,
                 "list every problem of a submission CSV against test.json")
    p.add_argument("csv", help="the submission CSV")
    p.add_argument("--test-json", required=True, help="the test.json the rows must follow")
    p.add_argument("--num-classes", type=int, default=None,
                   help="default: the test.json's categories plus background")
    p.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"),
                   help="the label map size of the rows")

    p = add_command(sub, "ensemble", _cmd_ensemble, "vote submissions (hard) or prediction "
                 "folders (soft) into a submission CSV")
    p.add_argument("inputs", nargs="*",
                   help="submission CSVs (hard) or prediction folders (soft)")
    p.add_argument("--method", choices=["hard", "soft"], required=True, help="the vote")
    p.add_argument("--out", required=True, help="the submission CSV to write (not an input)")
    p.add_argument("--weights", nargs="+", default=None,
                   help="one weight per input (default: equal)")
    p.add_argument("--num-classes", type=int, default=11,
                   help="hard vote only; a soft vote takes the classes from meta.json")
    p.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"),
                   help="hard vote only: the label map size of the rows")

    p = add_command(sub, "lb", _cmd_lb, "record a public-leaderboard score beside a submission "
                 "(appended to outputs/leaderboard.jsonl)")
    p.add_argument("submission", help="the submission CSV that was uploaded")
    p.add_argument("score", help="its public leaderboard score (mIoU, 0-1)")
    p.add_argument("--note", default="", help="what it was, e.g. '5-fold soft vote'")
