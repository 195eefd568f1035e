"""Training checkpoints with orbax: train state + every host's data-iterator state, keep-N/best.

A checkpoint holds the train state (step, trainable student parameters, optimiser state, RNG)
and, as JSON, the data-iterator state of every process plus the run's metrics; the frozen
encoder and the teacher are rebuilt from the config, never saved. Saves are asynchronous and
atomic: orbax writes each step to a temporary directory and renames it when complete, or (on
`gs://`, or with `checkpoint.atomicity=commit_file`) writes in place and marks the step
complete with a commit file, so a killed run never leaves a half-written checkpoint that a
restart would pick up. The workdir may be a local path or a `gs://` URL: it reaches orbax as an
`etils.epath.Path`, never through `pathlib`, which would mangle the URL.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from flax_distil.errors import FlaxDistilError
from flax_distil.parallel import allgather
from flax_distil.train.config import CheckpointConfig

_STATE_BYTES = 8192  # room for one host's data-iterator state as JSON


def _all_process_states(local_state: dict) -> list[dict]:
    """Every process's data state, gathered (identical list on every host)."""
    if jax.process_count() == 1:
        return [local_state]
    encoded = json.dumps(local_state).encode()
    if len(encoded) > _STATE_BYTES:
        raise FlaxDistilError(f"data state of {len(encoded)} bytes exceeds {_STATE_BYTES}")
    buffer = np.zeros(_STATE_BYTES, np.uint8)
    buffer[: len(encoded)] = np.frombuffer(encoded, np.uint8)
    gathered = allgather(buffer)
    return [json.loads(bytes(row).rstrip(b"\0")) for row in gathered]


class Checkpointer:
    """orbax `CheckpointManager` for `workdir/checkpoints`."""

    def __init__(self, workdir: str | epath.PathLike, config: CheckpointConfig):
        policies = [checkpoint_managers.LatestN(config.keep)]
        if config.keep_best:
            policies.append(
                checkpoint_managers.BestN(
                    get_metric_fn=lambda metrics: metrics["eval_wer"],
                    reverse=True,  # lower WER is better
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=config.async_save,
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            create=True,
            atomicity_options=ocp.options.AtomicityOptions(
                mode=ocp.options.AtomicityMode(config.atomicity)
            ),
        )
        self.directory = checkpoint_directory(workdir)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, eval_wer: float | None = None) -> None:
        metrics = {"eval_wer": eval_wer} if eval_wer is not None else None
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave({"processes": _all_process_states(data_state)}),
            ),
            metrics=metrics,
            force=True,
        )

    def restore(self, step: int, abstract_state) -> tuple[object, dict]:
        """(train state laid out like `abstract_state`, this process's data state)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
            ),
        )
        processes = restored["data"]["processes"]
        if len(processes) != jax.process_count():
            raise FlaxDistilError(
                f"checkpoint {step} was written by {len(processes)} processes, not "
                f"{jax.process_count()}: resume with the same number of hosts"
            )
        return restored["state"], processes[jax.process_index()]

    def restore_state(self, step: int, abstract_state):
        """The train state alone, laid out like `abstract_state` (without the data state, any
        number of processes can read it: `export` on one host of a pod's run)."""
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def checkpoint_directory(workdir: str | epath.PathLike) -> epath.Path:
    """`workdir/checkpoints`, absolute for a local workdir, a `gs://` URL kept as it is
    (resolving a URL as a local path would turn it into `cwd/gs:/...`)."""
    text = str(workdir)
    return epath.Path(text if "://" in text else os.path.abspath(text)) / "checkpoints"


def abstract_like(tree, shardings):
    """ShapeDtypeStructs with the given shardings: the restore target."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
