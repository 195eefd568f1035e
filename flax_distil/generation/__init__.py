"""Pure-JAX Whisper decoding: batched greedy, batched speculative, logit rules, long-form.

transcriber = Transcriber.load("pypi:tiny.en")
generated = transcriber.generate(features)            # features [B, 80, 3000]
texts = [transcriber.text(row) for row in generated.rows()]
"""

from flax_distil.generation.greedy import Generated, greedy_decode
from flax_distil.generation.rules import LogitRules, apply_rules
from flax_distil.generation.speculative import speculative_decode
from flax_distil.generation.transcriber import Transcriber

__all__ = [
    "Generated",
    "LogitRules",
    "Transcriber",
    "apply_rules",
    "greedy_decode",
    "speculative_decode",
]
