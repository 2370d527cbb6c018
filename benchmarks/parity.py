"""Parity with the official PyTorch SaShiMi: its learning curve and ten of its optimizer steps, through our code.

  python benchmarks/parity.py [--seeds 0,1,2] [--steps 100] [--train_audio FILE --eval_audio FILE]
                              [--skip_curves] [--skip_ten] [--set model.x=y ...] [--out FILE]

1. Learning curve (the protocol of ../shared/parity/README.md): the 2-layer model (configs/bigband_2layer.py)
   initialised with each seed, batch 1, 4096-sample windows, at step s the window
   ``train[rng.integers(len(train))]`` with ``rng = np.random.default_rng(seed)``, AdamW lr 0.004 for every
   parameter (SSM ones too), betas (0.9, 0.999), no weight decay, constant rate, no clipping; the loss of each
   step before its update; then the mean NLL over every evaluation window. Our model, optimizer and train
   step (sashimi_jax.train_step.make_train_step). Windows come from ``brahms_4096.npy`` / ``trumpet_4096.npy``, or
   from any recordings (``--train_audio`` / ``--eval_audio``, cut the reference's way by the data pipeline).
   The official curves (``ref_curve_brahms_s*.json``) are printed beside ours when the data is theirs.
2. Ten steps from the official weights: ``l2.pt`` converted (sashimi_jax.convert), ten of our train steps on
   the windows listed in ``l2_steps.json``; each step's loss beside the official ``loss_before_update``, and
   every parameter after the tenth step against ``l2_after10.pt`` (relative L2 error per tensor).

Prints one JSON object. Needs ../shared/parity (or --parity_dir).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import harness
import jax
import numpy as np
from flax import nnx

import sashimi_jax as sj
from sashimi_jax import audio, convert, load_config, metrics, optim, parallel, ptfile, train_step
from sashimi_jax.mulaw import shift_inputs

PARITY = harness.REPO.parent / "shared" / "parity"
PROTOCOL = ["data.sample_len=4096", "train.batch_size=1", "train.lr=0.004", "train.ssm_lr=0.004",
            "train.weight_decay=0.0", "train.schedule=constant", "train.grad_clip=0.0", "train.ema=0.0"]


def protocol_config(seed: int, overrides: list[str]):
    """configs/bigband_2layer.py under the parity protocol, seeded."""
    return load_config(harness.config_file("bigband_2layer"), [*PROTOCOL, f"train.seed={seed}", *overrides])


class Trainer:
    """Our train step and evaluation on one device, for a config and (optionally) given initial parameters."""

    def __init__(self, cfg, params=None):
        self.cfg, self.mesh = cfg, parallel.make_mesh(jax.devices()[:1])
        self.parts, init = train_step.build_model(cfg)
        params = init if params is None else params
        tx = optim.make_optimizer(cfg.train, self.parts.groups)
        self.state = train_step.replicate(train_step.init_state(cfg, params, tx), self.mesh)
        self.step_fn = train_step.make_train_step(self.parts, tx, cfg, self.mesh)
        bits = int(cfg.data.bits)

        @jax.jit
        def nll(params, targets):
            model = nnx.merge(self.parts.eval_graphdef, params, self.parts.rest)
            return metrics.mean_nll(model(shift_inputs(targets, bits)), targets)

        self._nll = nll

    def step(self, window: np.ndarray) -> float:
        self.state, out = self.step_fn(self.state, np.asarray(window, np.int32)[None])
        return float(out["loss"])

    def eval_nll(self, windows: np.ndarray) -> float:
        return float(np.mean([float(self._nll(self.state["params"], np.asarray(w, np.int32)[None])) for w in windows]))


def audio_windows(path: str, length: int = 4096) -> np.ndarray:
    """The reference's windows of a recording: 16 kHz mono, non-overlapping, each min-max scaled and mu-law encoded."""
    return audio.window_tokens(audio.load_audio(path, 16000), length, 8)


def curve(seed: int, steps: int, train_w: np.ndarray, eval_w: np.ndarray, overrides: list[str]) -> dict:
    """One run of the learning-curve protocol."""
    t0 = time.perf_counter()
    trainer = Trainer(protocol_config(seed, overrides))
    rng = np.random.default_rng(seed)
    losses = [trainer.step(train_w[rng.integers(len(train_w))]) for _ in range(steps)]
    tail = losses[-10:]
    return {
        "seed": seed,
        "train_loss": [round(x, 5) for x in losses],
        "mean_last10": float(np.mean(tail)),
        "eval_nll": trainer.eval_nll(eval_w),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def ten_steps(parity: Path, overrides: list[str]) -> dict:
    """Ten of our steps from the official l2.pt against the official losses and l2_after10.pt."""
    ref = json.loads((parity / "l2_steps.json").read_text())
    cfg = protocol_config(0, overrides)
    template = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: sj.SaShiMi(cfg.model, rngs=nnx.Rngs(0))), nnx.Param))
    start = convert.to_params(ptfile.read_state_dict(parity / "l2.pt"), cfg.model, template)
    after = convert.to_params(ptfile.read_state_dict(parity / "l2_after10.pt"), cfg.model, template)
    trainer = Trainer(cfg, start)
    train_w = np.load(parity / "brahms_4096.npy")
    losses = [trainer.step(train_w[i]) for i in ref["window_indices"]]
    diffs = np.abs(np.asarray(losses) - np.asarray(ref["loss_before_update"]))
    ours = trainer.state["params"]
    rel = {}
    for e in convert.layout(cfg.model):
        a = np.asarray(convert.get_path(ours, e.ours), np.float64)
        b = np.asarray(convert.get_path(after, e.ours), np.float64)
        s = np.asarray(convert.get_path(start, e.ours), np.float64)
        moved = np.linalg.norm(b - s)
        rel[e.official] = {"rel_err": float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)),
                           "err_over_update": float(np.linalg.norm(a - b) / moved) if moved > 0 else 0.0}
    not_c = {k: v for k, v in rel.items() if not k.endswith(".kernel.C")}
    worst_not_c = max(not_c.items(), key=lambda kv: kv[1]["rel_err"])
    worst = max(rel.items(), key=lambda kv: kv[1]["rel_err"])
    worst_update = max(rel.items(), key=lambda kv: kv[1]["err_over_update"])
    return {
        "loss_before_update": [round(x, 6) for x in losses],
        "official_loss_before_update": ref["loss_before_update"],
        "max_abs_loss_diff": float(diffs.max()),
        "param_rel_err_max": {"tensor": worst[0], **worst[1]},
        "param_err_over_update_max": {"tensor": worst_update[0], **worst_update[1]},
        # the official model trains C~ = C (I - A_bar^L), we train C: their C after ten steps differs by design
        "param_rel_err_max_except_C": {"tensor": worst_not_c[0], **worst_not_c[1]},
        "param_rel_err_median": float(np.median([v["rel_err"] for v in rel.values()])),
    }


def main() -> None:
    p = harness.parser(__doc__, overrides=True)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the learning-curve runs")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--parity_dir", default=str(PARITY), help="the official fixtures (../shared/parity)")
    p.add_argument("--train_audio", default="", help="train on windows of this recording instead of brahms_4096.npy")
    p.add_argument("--eval_audio", default="", help="evaluate on windows of this recording instead of trumpet_4096.npy")
    p.add_argument("--skip_curves", action="store_true")
    p.add_argument("--skip_ten", action="store_true")
    args = p.parse_args()
    parity = Path(args.parity_dir)
    if not parity.is_dir():
        sys.exit(f"parity fixtures not found at {parity}; pass --parity_dir pointing at shared/parity.")
    result: dict = {"device": str(jax.devices()[0].device_kind), "protocol": PROTOCOL, "overrides": args.set}
    if not args.skip_curves:
        train_w = audio_windows(args.train_audio) if args.train_audio else np.load(parity / "brahms_4096.npy")
        eval_w = audio_windows(args.eval_audio) if args.eval_audio else np.load(parity / "trumpet_4096.npy")
        runs = [curve(int(s), args.steps, train_w, eval_w, args.set) for s in args.seeds.split(",")]
        result["data"] = {"train": args.train_audio or "brahms_4096.npy", "eval": args.eval_audio or "trumpet_4096.npy",
                          "train_windows": int(len(train_w)), "eval_windows": int(len(eval_w))}
        result["ours"] = runs
        result["ours_mean_last10"] = float(np.mean([r["mean_last10"] for r in runs]))
        result["ours_eval_nll"] = float(np.mean([r["eval_nll"] for r in runs]))
        if not args.train_audio and not args.eval_audio:
            official = [json.loads(f.read_text()) for f in sorted(parity.glob("ref_curve_brahms_s*.json"))]
            result["official"] = [
                {"seed": o["seed"], "mean_last10": float(np.mean(o["train_loss"][90:100])), "eval_nll": o["eval_loss_nats"]}
                for o in official
            ]
            result["official_mean_last10"] = float(np.mean([o["mean_last10"] for o in result["official"]]))
            result["official_eval_nll"] = float(np.mean([o["eval_nll"] for o in result["official"]]))
            result["gap_last10"] = result["ours_mean_last10"] - result["official_mean_last10"]
            result["gap_eval"] = result["ours_eval_nll"] - result["official_eval_nll"]
    if not args.skip_ten:
        result["ten_steps"] = ten_steps(parity, args.set)
    harness.emit(result, args.out)


if __name__ == "__main__":
    main()
