"""Where trained models look, and how long `trajvid explain` takes per sample.

    python bench/explain.py                                  # the workspace's models/, 20 test samples
    python bench/explain.py --rev slowfast-1epoch --rev magvit-1epoch --samples 20

For each model: the mean (and range) over the first N test samples of the share of each map
(class saliency, position saliency, attention rollout) within 3 px of the sphere's projected
centre, the share of the image that area covers, and the seconds per sample of the whole
`explain` (maps, images, files).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    from trajvid.model_files import load_trained
    from trajvid.runtime.devices import set_threads
    from trajvid.tools.explain import explain
    from trajvid.tools.revisions import load_trained_at

    parser = argparse.ArgumentParser()
    parser.add_argument("--rev", action="append", default=[], help="a revision or experiment (repeat); default: workspace")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "trajectories")
    args = parser.parse_args()
    set_threads(0)
    models = []
    if not args.rev:
        models.append(("workspace", *load_trained(ROOT / "models")))
    for rev in args.rev:
        trained = load_trained_at(ROOT, rev)
        models.append((rev, trained.model, trained.config))
    for label, model, config in models:
        with tempfile.TemporaryDirectory() as tmp:
            results = explain(model, config, args.data, "test", list(range(args.samples)), tmp, label)
        shares = {name: [r["shares"][name] for r in results] for name in results[0]["shares"]}
        seconds = [r["seconds"] for r in results]
        correct = sum(r["true_class"] == r["predicted_class"] for r in results)
        text = ", ".join(f"{name} {statistics.fmean(v):.1%} ({min(v):.1%}-{max(v):.1%})" for name, v in shares.items())
        print(f"{label} ({config['backbone']}): within 3 px of the sphere: {text}; area {results[0]['chance_share']:.2%}; "
              f"{statistics.fmean(seconds):.2f} s/sample (max {max(seconds):.2f}); {correct}/{len(results)} classified "
              f"right", flush=True)


if __name__ == "__main__":
    main()
