"""The `trajvid` command: the pipeline's four stages and the tools beside them.

Each command parses its arguments, reads what it needs (the stages and `evaluate`'s thread and
worker counts: params.yaml; the tools: the repository, the data and models they are given) and
calls one function of a stage or tool module, which receives everything it computes with as
arguments. (That is why dvc.yaml lists the stage modules as deps and not this file: see
docs/design.md, "Stage dependencies".)

Expected failures (bad params, missing or damaged data and model files, a full disk, a diverged
training, SIGTERM or Ctrl-C) end with one line `error: ...` on stderr and an exit code: 2 for bad
input, 1 for a diverged training, 128 + the signal's number for an interrupt. Nothing
half-written stays. A traceback means a bug.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import typer

from trajvid.errors import Interrupted, TrajvidError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="The trajvid pipeline's stages and the tools beside them (see README.md).")

PARAMS = typer.Option(Path("params.yaml"), "--params", help="The parameters file.")


def _show_progress(flag: bool | None) -> bool:
    """Progress bars by default only on a terminal: DVC queue logs stay readable."""
    return sys.stderr.isatty() if flag is None else flag


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


class _Interrupts:
    """What this process's signal handling has seen (SIGTERM and SIGINT: the interrupts).

    Python runs a signal's handler between two bytecodes of the main thread, wherever that is.
    Inside a destructor or an at-fork callback (the DataLoader forking its workers runs
    `logging`'s) the exception it raises is printed and dropped, and the command would go on; an
    interrupt caught while torch builds a DataLoader leaves objects whose destructors and threads
    then fail too, and a callback cut short can leave a lock held (`logging`'s). So the handler
    notes the signal before it raises; a dropped interrupt is sent again (`_unraisable`), or
    raised when the command returns; what fails after an interrupt stays quiet; and `main` ends
    the process as soon as the interrupt is reported."""

    received: str | None = None  # the first interrupt received, e.g. "SIGTERM"
    raised = False  # its exception is on its way up (not dropped): a second one is only noted
    reporting = False  # the command's failure is being reported: an interrupt is only noted
    exit_code: int | None = None  # once the one line `error: interrupted by ...` is out
    timers: list = []  # pending `_send_again`s, cancelled when the command ends


def _interrupt_handler(owner: int):
    """SIGTERM -> Interrupted, SIGINT -> KeyboardInterrupt, in the process `owner` only. Forked
    workers (DataLoader, generate's pool) inherit the handler; one of them raising would print a
    traceback of its own on the shared stderr, so there SIGTERM does what it does by default (the
    worker ends; training reports it) and SIGINT is ignored from then on (the interrupted parent
    ends its workers)."""

    def handle(signum, _frame) -> None:
        name = signal.Signals(signum).name
        if os.getpid() != owner:
            if signum == signal.SIGINT:
                signal.signal(signum, signal.SIG_IGN)
                return
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        _Interrupts.received = _Interrupts.received or name
        if _Interrupts.raised or _Interrupts.reporting:
            return
        _Interrupts.raised = True
        raise _exception_for(name)

    return handle


def stage(command):
    """Run a command with SIGTERM and SIGINT turned into exceptions (so that cleanup runs) and
    every expected failure, an interrupt among them, reported as one line."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        _Interrupts.received, _Interrupts.raised, _Interrupts.reporting, _Interrupts.exit_code = None, False, False, None
        handler = _interrupt_handler(os.getpid())
        # not where the signal was ignored on purpose (`trajvid train &` in a script ignores SIGINT)
        previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)
                    if signal.getsignal(signum) != signal.SIG_IGN}
        # Installed before the command runs: the DataLoader's destructor can complain while the
        # interrupt is still unwinding through the training loop, before any handler below runs.
        hooks = sys.unraisablehook, threading.excepthook
        sys.unraisablehook, threading.excepthook = _unraisable, _thread_failed
        try:
            result = command(*args, **kwargs)
            if _Interrupts.received:  # its exception dropped or swallowed: the command went on
                raise _exception_for(_Interrupts.received)
            return result
        except (Interrupted, KeyboardInterrupt, Exception) as raised:
            _Interrupts.reporting = True
            # A signal sent to the whole process group also ends DataLoader workers, and torch
            # then raises its own error, while the interrupt is being handled or (its exception
            # dropped, see _Interrupts) in its place: report the interrupt.
            error = _interrupt_in(raised)
            if error is None and _Interrupts.received is None:
                if isinstance(raised, TrajvidError):
                    _fail(str(raised), raised.exit_code)
                raise
            # torch's SIGCHLD handler raises as each worker the signal killed ends: not now.
            signal.signal(signal.SIGCHLD, lambda *_: None)
            name = _Interrupts.received if error is None else _signal_of(error)
            doing = getattr(error, "while_writing", None)
            _Interrupts.exit_code = 128 + getattr(signal, name)
            _fail(_interrupted(name, f"while writing {doing}" if doing else f"during `trajvid {command.__name__}`"),
                  _Interrupts.exit_code)
        finally:
            for timer in _Interrupts.timers:
                timer.cancel()
            _Interrupts.timers.clear()
            if _Interrupts.exit_code is None:  # after an interrupt, `main` ends the process quietly
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
                sys.unraisablehook, threading.excepthook = hooks

    return run


def _exception_for(name: str) -> BaseException:
    """The exception an interrupt raises: KeyboardInterrupt for SIGINT (as Python's own handler
    raises), Interrupted for SIGTERM."""
    return KeyboardInterrupt() if name == "SIGINT" else Interrupted(name)


def _signal_of(interrupt: BaseException) -> str:
    """The signal an interrupt's exception (`_exception_for`'s) stands for."""
    return "SIGINT" if isinstance(interrupt, KeyboardInterrupt) else interrupt.signal_name


def _interrupted(name: str, where: str) -> str:
    return (f"interrupted by {name} {where}; nothing half-written was kept and earlier outputs are intact; "
            "run it again (`dvc repro`) to restart, or to resume training from its last checkpoint")


def _unraisable(unraisable) -> None:
    """Errors Python cannot raise (in a destructor, an at-fork callback), some of them ours:
    - an interrupt (SIGTERM's Interrupted, SIGINT's KeyboardInterrupt) dropped where it landed:
      the signal is sent again, so that it is raised in the command's own code and reported there;
    - torch's DataLoader destructor complaining that its workers were killed by a signal (one
      sent to the whole process group): that is the interrupt, reported as one line (a worker
      dying during training still raises in the training loop itself and is reported there);
    - after an interrupt, anything: objects it left half-built failing (a pipe closed twice).
    Anything else is printed as Python prints it. Nothing raised in here gets out (Python would
    print it): a signal whose handler runs in here is sent again too."""
    try:
        error = unraisable.exc_value
        text = str(error)
        if isinstance(error, (Interrupted, KeyboardInterrupt)):
            _send_again(_signal_of(error))
        elif isinstance(error, RuntimeError) and "DataLoader worker" in text and "killed by signal" in text:
            pass
        elif _Interrupts.received is None:
            sys.__unraisablehook__(unraisable)
    except (Interrupted, KeyboardInterrupt) as late:
        _send_again(_signal_of(late))
    except BaseException:
        pass


def _thread_failed(failure) -> None:
    """A thread's uncaught exception: quiet after an interrupt (a DataLoader's queue feeder
    thread whose pipe the interrupt closed), printed as Python prints it otherwise."""
    if _Interrupts.received is None:
        threading.__excepthook__(failure)


def _send_again(name: str) -> None:
    """Send the interrupt `name`, whose exception was dropped, to this process again in a moment,
    from another thread: sent from here, its handler would run before the hook returns, where its
    exception is dropped too."""
    _Interrupts.raised = False
    pid, signum = os.getpid(), getattr(signal, name)

    def send() -> None:
        if not (_Interrupts.raised or _Interrupts.reporting):
            os.kill(pid, signum)

    timer = threading.Timer(0.01, send)
    timer.daemon = True
    _Interrupts.timers.append(timer)
    timer.start()


def _interrupt_in(error: BaseException | None) -> BaseException | None:
    """The SIGTERM/SIGINT exception that `error` is, or arose while handling, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (Interrupted, KeyboardInterrupt)):
            return error
        seen.add(id(error))
        error = error.__context__ or error.__cause__
    return None


def _claim_gpu() -> None:
    """A free GPU of its own for this run (a no-op without GPUs), before anything starts CUDA:
    which GPU a run uses is decided here and is not a DVC param (see runtime/gpus.py)."""
    from trajvid.runtime.gpus import claim

    claim()


def _load(path: Path):
    from trajvid.params import load

    return load(path)


@app.command()
@stage
def generate(
    params_file: Path = PARAMS,
    out: Path = typer.Option(None, help="Output dataset directory [default: data/trajectories, or "
                                         "data/robustness/SHIFT with --shift]."),
    shift: str = typer.Option(None, help="A shifted set of params.yaml's robustness.shifts instead (stage `shift`)."),
    progress: bool | None = typer.Option(None, help="Show a progress bar [default: on a terminal]."),
) -> None:
    """Render the synthetic dataset (stage `generate`), or one shifted set (stage `shift`)."""
    from trajvid.generate import generate as run

    params = _load(params_file)
    seed, data = params.shifted_data(shift) if shift else (params.seed, params.data)
    out = out or (Path("data/robustness") / shift if shift else Path("data/trajectories"))
    summary = run(seed, data, out, progress=_show_progress(progress), where=f"robustness.shifts.{shift}" if shift else "data")
    counts = {split: sum(c.values()) for split, c in summary["splits"].items()}
    typer.echo(f"wrote {out}: {counts} in {len(summary['files'])} shards")


@app.command()
@stage
def train(
    params_file: Path = PARAMS,
    data: Path = typer.Option(Path("data/trajectories"), help="Dataset directory."),
    out: Path = typer.Option(Path("models"), help="Model output directory."),
    live: str = typer.Option("dvclive", help="DVCLive directory; 'none' disables logging."),
    progress: bool | None = typer.Option(None, help="Show a progress bar with ETA [default: on a terminal]."),
) -> None:
    """Train params.model on the train split (stage `train`); resumes from a matching checkpoint."""
    params = _load(params_file)
    _claim_gpu()
    from trajvid.train import train as run

    run(params, data, out, None if live == "none" else live, progress=_show_progress(progress), status_dir=Path("."))


@app.command()
@stage
def evaluate(
    data: Path = typer.Option(Path("data/trajectories"), help="Dataset directory."),
    model: Path = typer.Option(Path("models"), help="Trained model directory."),
    out: Path = typer.Option(None, help="Metrics output directory [default: metrics, or metrics/validation "
                                         "with --split validation, beside the stage's own]."),
    params_file: Path = PARAMS,
    split: str = typer.Option("test", help="test (the stage: a run's result), validation (design comparisons) or "
                                           "all (every sample: a dataset of your own)."),
) -> None:
    """Evaluate the trained model on the test split (stage `evaluate`), or on any split of any dataset."""
    if split not in ("test", "validation", "all"):
        _fail(f"--split {split!r} is not allowed: use test, validation or all (every sample)")
    out = out or (Path("metrics") if split == "test" else Path("metrics") / split)
    params = _load(params_file)
    _claim_gpu()
    from trajvid.evaluate import evaluate as run

    metrics = run(data, model, out, threads=params.train.threads, num_workers=params.train.num_workers, split=split)
    test = metrics[split]
    typer.echo(
        f"{metrics['model']['name']}: {split} accuracy {test['accuracy']:.4f}, "
        f"next-position RMSE {test['position_rmse']:.4f}"
    )


@app.command()
@stage
def robustness(
    model: Path = typer.Option(Path("models"), help="Trained model directory."),
    data: Path = typer.Option(Path("data/robustness"), help="The shifted sets (one directory per shift)."),
    baselines: Path = typer.Option(Path("metrics/robustness"), help="The baseline's figures on each shifted set."),
    out: Path = typer.Option(Path("metrics/robustness.json"), help="Metrics file to write."),
    params_file: Path = PARAMS,
) -> None:
    """Score the trained model on every shifted set of robustness.shifts, the baseline beside it (stage `robustness`)."""
    params = _load(params_file)
    _claim_gpu()
    from trajvid.robustness import robustness as run

    result = run(params, model, data, baselines, out)
    for name, shift in result["shifts"].items():
        typer.echo(f"{name:<16} accuracy {shift['model']['accuracy']:.4f} next RMSE {shift['model']['position_rmse']:.5f}"
                   f"   baseline {shift['baseline']['accuracy']:.4f} / {shift['baseline']['position_rmse']:.5f}"
                   f"   copy-last {shift['copy_last']['position_rmse']:.5f}")


@app.command()
@stage
def baseline(
    data: Path = typer.Option(Path("data/trajectories"), help="Dataset directory."),
    out: Path = typer.Option(None, help="Metrics file to write [default: metrics/baseline.json, or "
                                         "metrics/SPLIT/baseline.json for another split, beside the stage's own]."),
    split: str = typer.Option("test", help="test (the stage), validation, or all (every sample: a shifted set)."),
) -> None:
    """The classical yardstick on the test split: centroids, triangulation, per-class fits (stage `baseline`)."""
    if split not in ("test", "validation", "all"):
        _fail(f"--split {split!r} is not allowed: use test, validation or all")
    out = out or (Path("metrics/baseline.json") if split == "test" else Path("metrics") / split / "baseline.json")
    from trajvid.baseline import baseline as run

    result = run(data, out, split)
    figures = result[split]
    typer.echo(f"baseline: {split} accuracy {figures['accuracy']:.4f}, next-position RMSE "
               f"{figures['position_rmse']:.4f} (copying the last position: {result['copy_last']['position_rmse']:.4f})")


@app.command()
@stage
def status(
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON (for scripts)."),
    repo: Path = typer.Option(Path("."), "--repo", help="The repository."),
) -> None:
    """The workspace's training and every queued, running, finished or failed DVC experiment."""
    import json

    from trajvid.tools.status import collect, render

    result = collect(repo)
    typer.echo(json.dumps(result, indent=2) if as_json else render(result))


@app.command()
@stage
def collect(
    revisions: list[str] = typer.Argument(None, help="Experiment names, branches, tags, commits, or `workspace` "
                                                       "[default: the workspace and every DVC experiment]."),
    repo: Path = typer.Option(Path("."), "--repo", help="The repository."),
    bundle: Path = typer.Option(None, "--bundle", help="A grid.tar.gz of scripts/device_grid.py: the runs made on "
                                                        "another machine (a GPU's), recorded as the commit it ran."),
) -> None:
    """Record each finished run in git: results/runs/<name>/ (run.json, metrics, curves, per-sample predictions)."""
    from trajvid.tools.records import collect as run
    from trajvid.tools.records import collect_bundle

    if bundle is not None and revisions:
        _fail("--bundle records the runs of a bundle: give no revisions with it")
    for source, name, what in (collect_bundle(repo, bundle) if bundle is not None else run(repo, revisions or None)):
        typer.echo(f"{source}: {name} {what}" if name != "-" else f"{source}: {what}")


@app.command()
@stage
def report(
    names: list[str] = typer.Argument(None, help="Run records, experiments, branches, tags or commits [default: every "
                                                   "record in results/runs/ and every finished experiment]."),
    out: Path = typer.Option(Path("reports"), help="Output directory."),
    publish: bool = typer.Option(False, "--publish", help="Also write the results of docs/results.md and the README "
                                                          "(from the records alone)."),
    repo: Path = typer.Option(Path("."), "--repo", help="The repository."),
) -> None:
    """Tables and charts comparing the backbones, with intervals: reports/comparison.{md,html} and PNG charts."""
    from trajvid.tools.report import report as run

    if publish and names:
        _fail("--publish writes the results of every record: give no names with it")
    result = run(repo, names or None, out, publish_docs=publish)
    typer.echo(f"wrote {result['out']}/comparison.md, comparison.html and {len(result['charts'])} charts "
               f"({result['runs']} runs in {result['configurations']} configurations on {result['sections']} datasets)"
               + (f"; and {', '.join(result['published'])}" if result["published"] else ""))


@app.command()
@stage
def ensemble(
    revisions: list[str] = typer.Argument(..., help="Two or more branches, tags, commits, experiment names, or run records (results/runs/)."),
    weights: str = typer.Option("equal", help="equal, or validation: proportional to 1 / validation RMSE^2."),
    data: Path = typer.Option(Path("data/trajectories"), help="Dataset directory (its test split is evaluated)."),
    out: Path = typer.Option(Path("metrics/ensemble.json"), help="Metrics file to write."),
    repo: Path = typer.Option(Path("."), "--repo", help="The repository."),
) -> None:
    """Average the models of several revisions and evaluate them as one: metrics/ensemble.json.
    Names that are all run records (results/runs/) are combined from their stored predictions:
    no model, data or DVC cache needed."""
    from trajvid.tools.records import RECORDS

    if all((repo / RECORDS / name / "run.json").is_file() for name in revisions):
        from trajvid.tools.ensemble import ensemble_of_records

        result = ensemble_of_records(repo, revisions, out, weights)
        test, best = result["test"], result["ensemble"]["best_member"]
        typer.echo(f"ensemble of {len(revisions)} records ({weights} weights): test accuracy {test['accuracy']:.4f}, "
                   f"next-position RMSE {test['position_rmse']:.4f} (best member: {best['accuracy']:.4f}, "
                   f"{best['position_rmse']:.4f}); wrote {out}")
        return
    _claim_gpu()
    from trajvid.runtime.devices import set_threads

    set_threads(0)  # this process's share of the cores, beside any running training
    from trajvid.tools.ensemble import ensemble as run

    result = run(repo, revisions, data, out, weights)
    test, best = result["test"], result["ensemble"]["best_member"]
    typer.echo(f"ensemble of {len(revisions)} ({weights} weights): test accuracy {test['accuracy']:.4f}, "
               f"next-position RMSE {test['position_rmse']:.4f} (best member: {best['accuracy']:.4f}, "
               f"{best['position_rmse']:.4f}); wrote {out}")


@app.command()
@stage
def explain(
    sample: list[int] = typer.Option([0], "--sample", help="Index of a sample in the split (repeat for several)."),
    split: str = typer.Option("test", help="train, validation or test."),
    rev: str = typer.Option(None, "--rev", help="Explain the model of this branch, tag, commit or experiment "
                                               "[default: the workspace's models/]."),
    data: Path = typer.Option(Path("data/trajectories"), help="Dataset directory."),
    model: Path = typer.Option(Path("models"), help="Trained model directory (without --rev)."),
    out: Path = typer.Option(Path("reports/explain"), help="Output directory."),
    repo: Path = typer.Option(Path("."), "--repo", help="The repository (with --rev)."),
) -> None:
    """Saliency maps (and attention rollout) of a trained model on a sample: PNG grid, GIF, JSON."""
    from trajvid.runtime.devices import set_threads
    from trajvid.tools.explain import explain as run
    from trajvid.tools.explain import trained_model

    set_threads(0)  # this process's share of the cores, beside any running training
    trained, config = trained_model(rev, model, repo, data)
    for result in run(trained, config, data, split, sample, out, rev or "workspace"):
        shares = ", ".join(f"{k} {v:.0%}" for k, v in result["shares"].items())
        typer.echo(f"{result['files'][0]} (+ .gif, .json): {split} sample {result['index']}, true "
                   f"{result['true_class']}, predicted {result['predicted_class']}; within {result['share_within_px']:g} "
                   f"px of the sphere: {shares} (area {result['chance_share']:.1%}); {result['seconds']:.1f} s")


WORKSPACE_EXEC = "TRAJVID_WORKSPACE_CODE"  # the package a restarted command was started again with


def _run_workspace_code() -> None:
    """Run the code of the repository the command runs in, not the checkout trajvid was installed
    from. `dvc exp run --queue` and `--temp` run each experiment in a copy of the repository
    (.dvc/tmp/exps/...), but an editable install imports the package from the checkout it was
    installed from: a queued experiment would run whatever that checkout's working tree holds when
    each stage starts, while its dvc.lock records the hashes of the copy's files, a silent
    mismatch. So where the working directory holds a trajvid package that is not the one imported,
    the command starts again (same process, same arguments and interpreter options) with that
    package first on the path."""
    import trajvid

    here = Path.cwd() / "src" / "trajvid" / "__init__.py"
    if not here.is_file() or here.samefile(trajvid.__file__):
        return
    if os.environ.get(WORKSPACE_EXEC) == str(here):  # started again, and still not this package: PYTHONPATH was lost
        typer.echo(f"error: {here.parent} is this repository's code, but Python imported {Path(trajvid.__file__).parent} "
                   f"even with PYTHONPATH={os.environ.get('PYTHONPATH', '')!r}; unset {WORKSPACE_EXEC} or fix PYTHONPATH",
                   err=True)
        raise SystemExit(2)
    path = os.pathsep.join(p for p in (str(here.parent.parent), os.environ.get("PYTHONPATH")) if p)
    # the interpreter's options (-O, -B, -W, -X dev/utf8/...) as multiprocessing passes them to its
    # children, less -I and -E: they would make the new interpreter ignore the PYTHONPATH set here
    flags = [f for f in subprocess._args_from_interpreter_flags() if f not in ("-I", "-E")]
    if sys.flags.isolated:  # -I without its PYTHONPATH part: no user site, no script folder on the path
        flags += ["-s", "-P"]
    os.execve(sys.executable, [sys.executable, *flags, "-m", "trajvid", *sys.argv[1:]],
              {**os.environ, "PYTHONPATH": path, WORKSPACE_EXEC: str(here)})


def main() -> None:  # the `trajvid` command and `python -m trajvid`
    _run_workspace_code()
    try:
        app(prog_name="trajvid")
    except BaseException:
        if _Interrupts.exit_code is None and _Interrupts.received:
            # an interrupt noted in `stage`'s last lines, after its report could be written
            _Interrupts.exit_code = 128 + getattr(signal, _Interrupts.received)
            command = sys.argv[1] if len(sys.argv) > 1 else ""
            typer.echo(f"error: {_interrupted(_Interrupts.received, f'during `trajvid {command}`')}", err=True)
        if _Interrupts.exit_code is not None:
            _end_after_interrupt(_Interrupts.exit_code)
        raise


def _end_after_interrupt(code: int) -> None:
    """End the process now that the interrupt is reported: Python's shutdown would run the
    destructors and threads of what the interrupt left half-built, and their tracebacks would
    follow the one line. Its child processes (DataLoader workers) are sent SIGTERM first, not
    waited for; nothing here stops the exit with `code`."""
    try:
        for child in multiprocessing.active_children():
            child.terminate()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # a closed pipe, a last signal: the exit code matters more
                pass
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
