"""Training data: sources, robust decoding, and a sharded, exactly resumable example stream.

sources = [Source(SourceSpec("audiofolder", "demo/train"))]
stream = ExampleStream(sources, seed=0, process_index=jax.process_index(),
                       process_count=jax.process_count())
example = next(stream)            # Example(id, audio float32 16 kHz, text)
saved = stream.state()            # JSON-able; ExampleStream(...).restore(saved) resumes
"""

from flax_distil.data.batches import Batches, BatchSpec
from flax_distil.data.examples import SKIP_REASONS, Example, ExampleFilter, Skipped
from flax_distil.data.labels import Labeller, LabelSpec, label_arrays
from flax_distil.data.sources import RawExample, Source, SourceSpec, spec_from_argument
from flax_distil.data.stream import ExampleStream, epoch_order

__all__ = [
    "SKIP_REASONS",
    "BatchSpec",
    "Batches",
    "Example",
    "ExampleFilter",
    "ExampleStream",
    "LabelSpec",
    "Labeller",
    "RawExample",
    "Skipped",
    "Source",
    "SourceSpec",
    "epoch_order",
    "label_arrays",
    "spec_from_argument",
]
