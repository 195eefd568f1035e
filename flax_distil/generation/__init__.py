"""Pure-JAX Whisper decoding: batched greedy, batched speculative, logit rules, long-form, and
the `Transcriber` that turns clips into transcripts on a mesh of devices.

transcriber = Transcriber.load("pypi:tiny.en")
transcripts = transcriber.transcribe(clips, DecodeOptions(batch_size=8))
texts = [t.text for t in transcripts]
"""

from flax_distil.generation.greedy import Generated, greedy_decode
from flax_distil.generation.options import DecodeOptions, Fallback
from flax_distil.generation.rules import LogitRules, apply_rules
from flax_distil.generation.speculative import speculative_decode
from flax_distil.generation.transcriber import Transcriber, default_dtype
from flax_distil.generation.transcripts import Transcript

__all__ = [
    "DecodeOptions",
    "Fallback",
    "Generated",
    "LogitRules",
    "Transcriber",
    "Transcript",
    "apply_rules",
    "default_dtype",
    "greedy_decode",
    "speculative_decode",
]
