"""Training logs (sashimi_jax.logs): a resumed run drops the records after its checkpoint, the meter averages
the steps between two records with compilation left out of the throughput, audio and images reach TensorBoard."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import tb_events

from sashimi_jax.logs import METRICS_FILE, Meter, RunLog, read_records


def test_resumed_log_reads_like_one_run(tmp_path):
    log = RunLog(tmp_path, title="t")
    for step in (5, 10, 15):
        log.write("train", step, {"loss": 1.0 / step, "bpb": 2.0 / step})
    log.close()
    (tmp_path / METRICS_FILE).write_text((tmp_path / METRICS_FILE).read_text() + '{"split": "tra')  # torn by a crash
    log = RunLog(tmp_path, resume_step=10, title="t")
    log.write("val", 12, {"loss": 0.5, "bpb": 0.7})
    log.plot()
    log.close()
    assert [(r["split"], r["step"]) for r in read_records(tmp_path / METRICS_FILE)] == [("train", 5), ("train", 10), ("val", 12)]
    assert json.loads((tmp_path / METRICS_FILE).read_text().splitlines()[-1])["loss"] == 0.5
    assert (tmp_path / "loss.png").stat().st_size > 1000 and list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_meter_averages_the_steps_of_a_record():
    meter = Meter()
    for loss, grad_norm in ((2.0, 1.0), (4.0, 3.0)):
        meter.add({"nll": loss * 10, "tokens": 10.0, **{f"correct@{k}": 5.0 for k in (1, 3, 5, 10)}, "loss": loss,
                   "grad_norm": grad_norm})
    meter.exclude(0.0, steps=2)  # both steps were compilation: no throughput yet
    rec = meter.flush(samples_per_step=100)
    assert rec["loss"] == pytest.approx(3.0) and rec["grad_norm"] == pytest.approx(2.0) and rec["accuracy"] == 0.5
    assert rec["steps_per_s"] is None and rec["samples_per_s"] is None
    meter.add({"nll": 1.0, "tokens": 1.0, **{f"correct@{k}": 1.0 for k in (1, 3, 5, 10)}, "loss": 1.0, "grad_norm": 1.0})
    rec = meter.flush(samples_per_step=100)
    assert rec["steps_per_s"] > 0 and rec["samples_per_s"] == pytest.approx(100 * rec["steps_per_s"])


def test_audio_and_spectrogram_go_to_tensorboard(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = tmp_path / "spec.png"
    plt.imsave(png, np.random.default_rng(0).uniform(size=(20, 30)))
    log = RunLog(tmp_path)
    log.add_audio("listen/0", 7, np.sin(np.arange(1600) / 5.0) * 0.5, 16000)
    log.add_png("listen/0_spectrogram", 7, png)
    log.close()
    assert tb_events(tmp_path / "tb") == [("listen/0", 7, "audio"), ("listen/0_spectrogram", 7, "image")]
