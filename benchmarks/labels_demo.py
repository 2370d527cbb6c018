"""Does a label-conditioned SaShiMi generate what it is asked for? Train, evaluate and generate per label, as JSON.

  python benchmarks/labels_demo.py [--seeds 0,1,2] [--steps 400] [--per_label 4] [--guidance 0,1,2] [--set K=V] [--out F]

For each training seed, with ``configs/demo_labels.py`` (the melody in a low and a high register, labelled
``signal=low`` / ``signal=high``): train (``experiments/train.py``), evaluate the test split
(``experiments/evaluate.py``: ``loss``, ``loss_null_label``, ``loss_wrong_label``), then generate ``per_label``
samples of each label at every guidance weight (``experiments/generate.py --label signal=low --label
signal=high --guidance w``, temperature 0.8, top-p 0.95) and classify every sample by its register: the class
whose training audio's median pitch (:func:`sashimi_jax.report.report`, ``median_pitch_hz``) is nearest on a log
scale to the sample's. A sample with no voiced frame follows no label. ``follow`` is the fraction of samples
classified as their label. Guidance 0 is the unconditional model (the null label's rows alone).

``--quick`` runs the same code at toy sizes (tests/test_benchmarks.py), where nothing is expected to follow.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import REPO, emit, last_json, parser

from sashimi_jax import report
from sashimi_jax.synthetic import SYNTHETIC_SEED, synthetic_piece

CONFIG = REPO / "configs" / "demo_labels.py"
QUICK = ["--config.model.d_model=8", "--config.model.d_state=8", "--config.data.sample_len=512", "--config.train.eval_batches=1",
         "--config.data.synthetic_seconds=16"]


def script(name: str, *args: str) -> tuple[dict | None, str]:
    """Run experiments/<name>.py with ``args``: its last JSON object ({} when it prints none; None when it
    fails) and its output."""
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / f"{name}.py"), *args], capture_output=True,
                          text=True, cwd=REPO, check=False)
    return (last_json(proc.stdout) or {} if proc.returncode == 0 else None), proc.stdout + proc.stderr


def class_pitches(signals: list[str], seconds: float = 20.0, rate: int = 16000) -> dict[str, float]:
    """Median pitch (Hz) of each class's training audio (the synthetic signal's training seed)."""
    return {s: report.report(synthetic_piece(",".join(signals), seconds, rate, SYNTHETIC_SEED, s), rate)["median_pitch_hz"]
            for s in signals}


def classify(pitch: float | None, classes: dict[str, float]) -> str | None:
    """The class whose median pitch is nearest to ``pitch`` in octaves; None for an unvoiced sample."""
    if pitch is None:
        return None
    return min(classes, key=lambda c: abs(math.log2(pitch / classes[c])))


def generate_case(workdir: Path, w: float, per_label: int, signals: list[str], classes: dict, seconds: float) -> dict:
    """``per_label`` samples per label at guidance ``w``, each classified by its register."""
    out = workdir / f"guidance_{w:g}"
    labels = [f"--label=signal={s}" for s in signals]
    got, text = script("generate", f"--workdir={workdir}", f"--out={out}", *labels, f"--guidance={w}",
                       f"--num_samples={per_label * len(signals)}", f"--seconds={seconds}", "--temp=0.8", "--top_p=0.95",
                       "--noprogress", "--nospectrogram", "--compile_cache=")
    if got is None:
        return {"guidance": w, "error": text[-2000:]}
    files = json.loads((out / "sample_report.json").read_text())["files"]
    asked = [signals[k % len(signals)] for k in range(len(files))]
    heard = [classify(files[name]["median_pitch_hz"], classes) for name in sorted(files)]
    return {
        "guidance": w,
        "follow": float(np.mean([a == h for a, h in zip(asked, heard)])),
        "asked": asked, "heard": heard,
        "pitch_hz": [files[name]["median_pitch_hz"] for name in sorted(files)],
        "voiced": [files[name]["voiced_fraction"] for name in sorted(files)],
    }


def run_seed(seed: int, args, root: Path, classes: dict) -> dict:
    """Train, evaluate and generate for one training seed."""
    workdir, extra = root / f"seed_{seed}", [*(QUICK if args.quick else []), *(f"--config.{kv}" for kv in args.set)]
    t0 = time.time()
    trained, text = script("train", f"--config={CONFIG}", f"--workdir={workdir}", f"--config.train.seed={seed}",
                           f"--config.train.num_steps={args.steps}", "--config.train.sample_every=0", "--compile_cache=", *extra)
    train_s = time.time() - t0
    if trained is None:
        return {"seed": seed, "error": text[-2000:]}
    ev, text = script("evaluate", f"--workdir={workdir}", "--split=test", "--compile_cache=")
    if ev is None:
        return {"seed": seed, "error": text[-2000:]}
    signals = list(classes)
    cases = [generate_case(workdir, w, args.per_label, signals, classes, args.seconds) for w in args.guidance]
    keys = ("loss", "loss_null_label", "loss_wrong_label")
    return {"seed": seed, "train_seconds": round(train_s, 1), **{k: ev[k] for k in keys}, "generate": cases}


def main() -> None:
    p = parser(__doc__, overrides=True)
    p.add_argument("--seeds", default="0,1,2", help="training seeds")
    p.add_argument("--steps", type=int, default=400, help="training steps (the demo's 400)")
    p.add_argument("--per_label", type=int, default=4, help="samples generated per label and guidance weight")
    p.add_argument("--guidance", default="0,1,2", help="guidance weights")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per generated sample")
    p.add_argument("--quick", action="store_true", help="toy sizes (the test of this script)")
    p.add_argument("--keep", default="", help="keep the runs and samples in this folder (default: a temporary one)")
    args = p.parse_args()
    args.guidance = [float(w) for w in args.guidance.split(",")]
    signals = ["low", "high"]
    classes = class_pitches(signals, 4.0 if args.quick else 20.0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        runs = [run_seed(int(s), args, root, classes) for s in args.seeds.split(",")]
    by_w = {f"{w:g}": [c["follow"] for r in runs for c in r.get("generate", []) if c["guidance"] == w and "follow" in c]
            for w in args.guidance}
    emit({
        "config": "demo_labels", "overrides": args.set, "steps": args.steps, "per_label": args.per_label, "class_pitch_hz": classes,
        "follow_mean": {w: (float(np.mean(v)) if v else None) for w, v in by_w.items()},
        "follow_min": {w: (float(np.min(v)) if v else None) for w, v in by_w.items()},
        "null_minus_true_nats": [r["loss_null_label"] - r["loss"] for r in runs if "loss" in r],
        "runs": runs,
    }, args.out)


if __name__ == "__main__":
    main()
