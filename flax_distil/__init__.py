"""flax-distil: distil OpenAI Whisper into small, fast students with JAX and Flax NNX."""

import os

# transformers (tokenizer, feature-extractor reference) warns on import that PyTorch is absent;
# flax-distil never needs PyTorch, so keep that line out of every command's output.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

__version__ = "0.1.0"
