"""`segkit plan` and `segkit search`: a starting recipe for the data and the budget, and an Optuna
study over a spec's `search:` space (segkit.search, segkit.flow.studies)."""

from __future__ import annotations

import argparse

from segkit.flow.cli import add_command


def _cmd_plan(args) -> int:
    from segkit.search.plan import make_plan

    result = make_plan(args.data, annotation_file=args.annotation_file, budget=args.budget,
                  gpus=args.gpus, model=args.model, out=args.out, probe=not args.no_probe,
                  log=print)
    print(result.report())
    return 0


def _cmd_search(args) -> int:
    from segkit.core.trials import import_optuna

    import_optuna()  # without the extra: one line naming it, exit 2
    from segkit.flow.cli import parse_assignments
    from segkit.flow.studies import load_search, papermill_train, run_search

    overrides = parse_assignments(args.params)
    if args.worker:  # one more worker of a study that is already prepared
        search = load_search(args.spec, overrides, args.storage, args.n_trials)
        search.study.work(papermill_train(args.kernel), worker=args.worker_name)
        return 0
    options = {k: v for k, v in (("partition", args.partition),
                                 ("gpus_per_job", args.gpus_per_job), ("time", args.time),
                                 ("cpus_per_job", args.cpus_per_job)) if v is not None}
    result = run_search(args.spec, overrides, storage=args.storage, n_trials=args.n_trials,
                        parallel=args.parallel, kernel=args.kernel, executor=args.executor,
                        executor_options=options, final=args.final)
    if len(result.table):
        shown = result.table.drop(columns=["runs", "error"], errors="ignore")
        print(shown.to_string())
    for path in result.executed:
        print(f"executed: {path}")
    return 0


def add_commands(sub) -> None:
    p = add_command(sub, "plan", _cmd_plan,
                    "the data's fingerprint and a starting pipeline spec that fits a time "
                    "budget on this machine (sizes, batch, iterations measured by short probes)")
    p.add_argument("data", help="the data folder (with train_all.json) or a COCO file")
    p.add_argument("--annotation-file", default="train_all.json",
                   help="the training COCO file, relative to the data folder")
    p.add_argument("--budget", default="75m",
                   help="wall time for the whole spec: 75m, 8h, 1h30m, 900s")
    p.add_argument("--gpus", type=int, default=None,
                   help="GPUs the spec trains on, one fold each (default: those here)")
    p.add_argument("--model", default="efficientnet_lite0", help="the catalogue model")
    p.add_argument("--out", default=None,
                   help="the spec to write (default: outputs/plans/<data>.yaml)")
    p.add_argument("--no-probe", action="store_true",
                   help="no training probes: sizes and iterations from defaults (not timed)")

    p = add_command(sub, "search", _cmd_search,
                    "an Optuna study over a spec's search: space, each trial a 04_train run, "
                    "pruned at every validation; writes the winner as a spec (needs the "
                    "search extra)")
    p.add_argument("spec", help="a pipeline spec with a search: section, e.g. "
                                "notebooks/search.yaml")
    p.add_argument("params", nargs="*", metavar="KEY=VALUE",
                   help="shared parameters overriding the spec's, e.g. data_root=/data/trash")
    p.add_argument("--storage", default="",
                   help="the study's storage: a journal file or a URL (sqlite:///..., "
                        "postgresql://...); default outputs/search/<name>/journal.log")
    p.add_argument("--n-trials", type=int, default=None,
                   help="trials in the study in all, every run counted (default: the spec's)")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="workers sharing the study: processes (one GPU each, or the CPU "
                        "cores shared) or Slurm jobs")
    p.add_argument("--final", action="store_true",
                   help="then run the winner spec (cross-validation / the final model)")
    p.add_argument("--kernel", default="python3", help="the Jupyter kernel of the trials")
    p.add_argument("--executor", choices=["local", "slurm"], default="local",
                   help="where the workers run")
    p.add_argument("--partition", default=None, help="Slurm partition (spec: executor:)")
    p.add_argument("--gpus-per-job", type=int, default=None, help="GPUs of each Slurm job")
    p.add_argument("--cpus-per-job", type=int, default=None, help="CPU cores of each job")
    p.add_argument("--time", type=int, default=None, metavar="MINUTES",
                   help="time limit of each Slurm job in minutes")
    p.add_argument("--worker", action="store_true",
                   help="only work on trials of a prepared study (what --parallel starts)")
    p.add_argument("--worker-name", default="", help=argparse.SUPPRESS)
