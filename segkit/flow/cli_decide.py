"""`segkit decide RUN ...`: decisions fitted and judged on the out-of-fold predictions of one
recipe's fold runs (segkit.predict.decisions): member weights (several recipes), a per-class
bias, per-class removal of small regions, each kept only when it helps out of fold by more
than the fold-to-fold noise. Writes outputs/decisions/<name>/decisions.json and prints what
was tried, kept or not and why, and the per-class IoU before and after each decision.
"""

from __future__ import annotations

from segkit.flow.cli import _prediction_arguments, add_command


def _cmd_decide(args) -> int:
    from segkit.flow.cli import predict_options
    from segkit.predict.cv import out_of_fold, recipes
    from segkit.predict.decision_record import write_decisions
    from segkit.predict.decisions import fit_decisions

    options = predict_options(args)
    oofs = []
    for recipe, members in recipes(args.runs).items():
        full = [r.name for r in members if r.full_data]
        if full:
            print(f"{recipe}: left out {', '.join(full)} (full-data runs have no out-of-fold "
                  "prediction)")
        oofs.append(out_of_fold([r for r in members if not r.full_data], options))
    decisions = fit_decisions([o.folder for o in oofs], oofs[0].truth, [o.name for o in oofs],
                              tried=args.decisions, margin=args.margin, progress=True)
    write_decisions(decisions, args.name or "+".join(o.name for o in oofs))
    print(decisions.report())
    return 0


def add_commands(sub) -> None:
    from segkit.predict.decisions import DECISIONS

    p = add_command(sub, "decide", _cmd_decide,
                    "decisions on the out-of-fold predictions of a recipe's fold runs "
                    "(weights, class bias, small regions), each kept only when it helps out "
                    "of fold; writes outputs/decisions/NAME/decisions.json")
    p.add_argument("runs", nargs="+", help="the fold runs of one recipe (or of several "
                                           "recipes on the same folds: their weights too)")
    p.add_argument("--name", default="", help="outputs/decisions/NAME (default: the OOF name)")
    p.add_argument("--decisions", nargs="+", choices=list(DECISIONS), default=list(DECISIONS),
                   help="the decisions to try (in this order)")
    p.add_argument("--margin", type=float, default=1.0,
                   help="kept when the OOF gain is above MARGIN x the standard error of the "
                        "per-fold gains")
    _prediction_arguments(p)
