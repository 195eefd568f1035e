"""`flax-distil train`: the training loop with resume, logging, eval, checkpoints and preemption.

    flax-distil train --config configs/tiny_en_demo.yaml --workdir runs/demo train.num_steps=50

`train` builds the run (`train.run`), compiles the step, then loops: log, eval, checkpoint, and
on SIGTERM save and exit. Running again on the same workdir resumes from its latest checkpoint
exactly: same batches, same parameters, same loss curve, and reuses the programs compiled by the
earlier run (`checkpoint.compilation_cache`). In a multi-host job an exception on one host ends
every host promptly (`train.failures`). The math lives in `train.step`, the data in
`flax_distil.data`.

Metrics of step t are read after step t + 1 has been dispatched, so the host never stalls the
device to fetch them; they are read at once when a log, eval or checkpoint needs them. A step
whose loss or gradient is not finite has left the state unchanged (see `train.step`): with
`train.on_nan=stop` the run ends with an error and the last good checkpoint stays the latest;
with `skip` it is counted and training goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from flax_distil import parallel
from flax_distil.errors import FlaxDistilError
from flax_distil.metrics import percent
from flax_distil.train import checkpoints, compilation_cache
from flax_distil.train.config import Config
from flax_distil.train.device_batches import DeviceBatches
from flax_distil.train.encoder_cache import EncoderCache
from flax_distil.train.eval import make_eval
from flax_distil.train.export import export_student
from flax_distil.train.failures import fail_together
from flax_distil.train.flops import model_flops_utilisation
from flax_distil.train.metric_writer import MetricWriter, flatten
from flax_distil.train.optimizer import make_optimizer
from flax_distil.train.plan import ProgramMemory, describe_run
from flax_distil.train.run import (
    Run,
    batch_shapes,
    build_run,
    peak_flops,
    prepare_workdir,
    sharded_state,
    step_flops,
    train_batches,
)
from flax_distil.train.step import jit_train_step

log = logging.getLogger(__name__)
LOGGED = ("loss", "ce", "kl", "grad_norm", "param_norm", "learning_rate")


class Preemption:
    """SIGTERM (TPU preemption, SLURM, `kill`) asks the loop to checkpoint and exit.

    All hosts must save at the same step, so in a multi-host job they agree on whether any of
    them got the signal only every `check_every` steps: a blocking collective every step would
    keep each host from running ahead of its devices. A single process acts on its own signal at
    the next step, with no collective at all."""

    def __init__(self, check_every: int = 1, process_count: int | None = None):
        self.requested = False
        self.check_every = check_every
        self.process_count = jax.process_count() if process_count is None else process_count
        self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def agreed(self, step: int) -> bool:
        """Whether the hosts stop after `step` (the same answer on every host)."""
        if self.process_count == 1:
            return self.requested
        if step % self.check_every:
            return False
        return bool(np.any(parallel.allgather(np.asarray(self.requested))))

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self.previous)


class Loop:
    def __init__(self, run: Run, step_fn, schedule, state, state_shardings):
        self.job, self.step_fn, self.state = run, step_fn, state
        self.config = run.config
        self.checkpointer = checkpoints.Checkpointer(run.workdir, self.config.checkpoint)
        self.batches = DeviceBatches(train_batches(run), run.mesh)  # one batch ahead
        self.start_step = self._resume(state_shardings)
        self.writer = MetricWriter(run.workdir, resume_step=self.start_step)
        self.evaluate = make_eval(run)
        self.encoder_cache = None
        if self.config.data.cache_encoder_outputs:
            self.encoder_cache = EncoderCache(run.models, run.settings.num_mel_bins, run.mesh)
        self.preemption = Preemption(self.config.checkpoint.preemption_check_every)
        self.peak = peak_flops(run)
        self.skipped_steps = 0
        self.last_eval: dict = {}
        self.last_eval_step: int | None = None

    def _resume(self, state_shardings) -> int:
        step = self.checkpointer.latest_step()
        if step is None:
            return 0
        abstract = checkpoints.abstract_like(self.state, state_shardings)
        self.state, data_state = self.checkpointer.restore(step, abstract)
        self.batches.restore(data_state)
        print(f"resumed from step {step} in {self.checkpointer.directory}")
        return step

    def run(self) -> dict:
        config = self.config
        if self.start_step == 0:
            settings = flatten(config.to_dict())
            settings["log.peak_flops"] = self.peak  # the MFU denominator used, measured or set
            names = [spec.name for spec in config.data.eval]
            metric_tags = ["train/loss"]
            metric_tags += [f"eval/{name}/{metric}" for name in names for metric in ("wer", "loss")]
            self.writer.hparams(settings, metric_tags)
            if config.eval.every:
                self._eval(0)  # the starting point of every eval curve
        pending = None  # (step, metrics on device) not yet read
        interval_start, interval_steps, interval_flops = time.perf_counter(), 0, 0.0
        last = {}
        progress = tqdm(
            total=config.train.num_steps,
            initial=self.start_step,
            desc="training",
            unit="step",
            disable=jax.process_index() != 0,
        )
        for step in range(self.start_step + 1, config.train.num_steps + 1):
            batch, arrays = next(self.batches)  # already on the devices; the next one sent
            interval_flops += step_flops(self.job, batch["labels"].shape[1])
            if self.encoder_cache is not None:
                arrays = self.encoder_cache.step_inputs(batch["ids"], arrays, self.job.models)
            self.state, metrics = self.step_fn(self.state, self.job.models.frozen, arrays)
            if pending is not None:
                last = self._check(*pending)
            pending = (step, metrics)
            interval_steps += 1
            progress.update(1)
            final = step == config.train.num_steps
            due = {
                "log": step % config.log.every == 0 or final,
                "eval": bool(config.eval.every) and step % config.eval.every == 0,
                "checkpoint": step % config.checkpoint.every == 0 or final,
            }
            stop = self.preemption.agreed(step)
            if any(due.values()) or stop:
                last = self._check(*pending)
                pending = None
            if due["log"]:
                seconds = (time.perf_counter() - interval_start) / interval_steps
                self._log(step, last, seconds, interval_flops / interval_steps)
                progress.set_postfix(loss=f"{last['loss']:.3f}")
                interval_start, interval_steps, interval_flops = time.perf_counter(), 0, 0.0
            if due["eval"] or (final and self.evaluate is not None):
                self._eval(step)
            if due["checkpoint"] or stop:
                self._save(step)
            if stop:
                print(f"preempted (SIGTERM): saved step {step}; rerun the command to resume")
                break
        progress.close()
        if pending is not None:
            last = self._check(*pending)
        finished = int(self.state["step"]) == config.train.num_steps
        if finished:
            export_student(self.job, self.state["params"], self.job.workdir / "student")
        return {"train": last, "eval": self.last_eval, "finished": finished}

    def _check(self, step: int, metrics) -> dict:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not values["finite"]:
            if self.config.train.on_nan == "stop":
                self.checkpointer.wait()
                raise FlaxDistilError(
                    f"step {step}: the loss or gradient is not finite (loss {values['loss']}); "
                    f"stopped with the last good checkpoint at step "
                    f"{self.checkpointer.latest_step()} (lower train.learning_rate, or set "
                    "train.on_nan=skip)"
                )
            self.skipped_steps += 1
            log.warning("step %d: non-finite loss or gradient; update skipped", step)
        return values

    def _log(self, step: int, values: dict, seconds_per_step: float, flops: float) -> None:
        batch = self.config.train.batch_size
        scalars = {k: values[k] for k in LOGGED}
        scalars.update(
            step_time=seconds_per_step,
            samples_per_second=batch / seconds_per_step,
            tokens_per_second=values["tokens"] / seconds_per_step,
            mfu=model_flops_utilisation(flops, seconds_per_step, self.peak, self.job.mesh.size),
            skipped_steps=self.skipped_steps,
        )
        skipped = self.batches.stream.skipped
        scalars.update({f"skipped_{reason}": count for reason, count in skipped.items()})
        self.writer.scalars(step, scalars)

    def _eval(self, step: int) -> None:
        if self.evaluate is None:
            return
        started = time.perf_counter()
        results, samples = self.evaluate(self.state["params"])
        for name, values in results.items():
            self.writer.scalars(step, values, kind=f"eval/{name}")
            shown = samples[name][: self.config.eval.num_samples_logged]
            table = "\n\n".join(f"**reference:** {r}  \n**prediction:** {p}" for r, p in shown)
            self.writer.text(step, f"samples/{name}", table)
        self.last_eval, self.last_eval_step = results, step
        summary = ", ".join(f"{n} WER {percent(v['wer'])}" for n, v in results.items())
        tqdm.write(f"step {step}: {summary} ({time.perf_counter() - started:.0f}s)")

    def _save(self, step: int) -> None:
        # Only an eval of this very step ranks the checkpoint for `keep_best`: a save between
        # evals (SIGTERM, `checkpoint.every`) must not inherit an earlier step's WER.
        evaluated = self.last_eval_step == step
        wers = [v["wer"] for v in self.last_eval.values()] if evaluated else []
        self.checkpointer.save(
            step,
            self.state,
            self.batches.state(),
            eval_wer=float(np.mean(wers)) if wers else None,
        )

    def close(self) -> None:
        self.checkpointer.close()
        self.writer.close()
        self.preemption.restore()
        stop_workers = getattr(self.batches.stream, "close", None)  # data.num_workers > 0
        if stop_workers is not None:
            stop_workers()


def train(config: Config, workdir: str | Path, *, dry_run: bool = False, devices=None) -> dict:
    """Trains (or resumes) in `workdir`; returns the last train and eval metrics."""
    with fail_together():
        return _train(config, workdir, dry_run=dry_run, devices=devices)


def _train(config: Config, workdir: str | Path, *, dry_run: bool, devices) -> dict:
    workdir = prepare_workdir(config, workdir)
    cache = compilation_cache.enable_compilation_cache(config.checkpoint.compilation_cache, workdir)
    run = build_run(config, workdir, devices)
    optimizer, schedule = make_optimizer(config.train)
    state, state_shardings = sharded_state(run, optimizer)
    step_fn = jit_train_step(
        run.models, run.settings, optimizer, schedule, run.mesh, state, batch_shapes(run)
    )
    if dry_run:
        compiled = step_fn.lower(state, run.models.frozen, batch_shapes(run)).compile()
        report = describe_run(run, state, compiled)
        print(report)
        return {"report": report, "memory": dataclasses.asdict(ProgramMemory.of(compiled))}
    loop = Loop(run, step_fn, schedule, state, state_shardings)
    try:
        result = loop.run()
    finally:
        loop.close()
    if cache is not None:
        print(f"compilation cache: {compilation_cache.reused()} programs reused from {cache}")
    return result
