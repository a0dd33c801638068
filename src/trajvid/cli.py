"""The `trajvid` command: the pipeline's stages, each reading params.yaml.

Only argument parsing and dispatch live here: each command reads params.yaml and calls its stage
function, which receives everything it computes with as arguments. (That is why dvc.yaml lists
the stage modules as deps and not this file: see docs/design.md, "Stage dependencies".)

Bad input ends with one line `error: ...` on stderr and exit code 2; nothing half-written stays.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

PARAMS = typer.Option(Path("params.yaml"), "--params", help="The parameters file.")


def _show_progress(flag: bool | None) -> bool:
    """Progress bars by default only on a terminal: DVC queue logs stay readable."""
    return sys.stderr.isatty() if flag is None else flag


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _load(path: Path):
    from trajvid.params import ParamsError, load

    try:
        return load(path)
    except ParamsError as error:
        _fail(str(error))


@app.command()
def generate(
    params_file: Path = PARAMS,
    out: Path = typer.Option(Path("data/trajectories"), help="Output dataset directory."),
    progress: bool | None = typer.Option(None, help="Show a progress bar [default: on a terminal]."),
) -> None:
    """Render the synthetic dataset (stage `generate`)."""
    from trajvid.generate import generate as run
    from trajvid.params import ParamsError

    params = _load(params_file)
    try:
        summary = run(params.seed, params.data, out, progress=_show_progress(progress))
    except ParamsError as error:
        _fail(str(error))
    counts = {split: sum(c.values()) for split, c in summary["splits"].items()}
    typer.echo(f"wrote {out}: {counts} in {len(summary['files'])} shards")


@app.command()
def train(
    params_file: Path = PARAMS,
    data: Path = typer.Option(Path("data/trajectories"), help="Dataset directory."),
    out: Path = typer.Option(Path("models"), help="Model output directory."),
    live: str = typer.Option("dvclive", help="DVCLive directory; 'none' disables logging."),
    progress: bool | None = typer.Option(None, help="Show a progress bar with ETA [default: on a terminal]."),
) -> None:
    """Train params.model on the train split (stage `train`); resumes from a matching checkpoint."""
    from trajvid.data import MissingDataError
    from trajvid.params import ParamsError
    from trajvid.train import TrainingDiverged, train as run

    params = _load(params_file)
    try:
        run(params, data, out, None if live == "none" else live, progress=_show_progress(progress))
    except (MissingDataError, ParamsError) as error:
        _fail(str(error))
    except TrainingDiverged as error:
        _fail(str(error), code=1)


@app.command()
def evaluate(
    data: Path = typer.Option(Path("data/trajectories"), help="Dataset directory."),
    model: Path = typer.Option(Path("models"), help="Trained model directory."),
    out: Path = typer.Option(Path("metrics"), help="Metrics output directory."),
    params_file: Path = PARAMS,
) -> None:
    """Evaluate the trained model on the test split (stage `evaluate`)."""
    from trajvid.data import MissingDataError
    from trajvid.evaluate import evaluate as run

    params = _load(params_file)
    try:
        metrics = run(data, model, out, threads=params.train.threads, num_workers=params.train.num_workers)
    except (MissingDataError, FileNotFoundError) as error:
        _fail(str(error))
    test = metrics["test"]
    typer.echo(
        f"{metrics['model']['name']}: test accuracy {test['accuracy']:.4f}, "
        f"next-position RMSE {test['position_rmse']:.4f}"
    )


def main() -> None:  # `python -m trajvid`
    app(prog_name="trajvid")


if __name__ == "__main__":
    sys.exit(main())
