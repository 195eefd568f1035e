"""PyTorch reference oracle, run in the reference environment (.venv-ref: Python 3.11, CPU torch).

The flax-distil tests run under Python >= 3.12, where only a multi-GB CUDA torch build exists;
they call this script as a subprocess instead. It never imports flax_distil.

    python torch_whisper.py random  CONFIG_JSON SEED OUT_DIR
    python torch_whisper.py forward MODEL_DIR INPUTS_NPZ OUT_NPZ
    python torch_whisper.py generate MODEL_DIR INPUTS_NPZ OUT_NPZ
    python torch_whisper.py logit-rules MODEL_DIR INPUTS_NPZ OUT_NPZ
"""

import json
import sys

import numpy as np
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration


def make_random(config_json: str, seed: str, out_dir: str) -> None:
    """A randomly initialised model whose weights are large enough for parity to mean something."""
    torch.manual_seed(int(seed))
    model = WhisperForConditionalGeneration(WhisperConfig(**json.loads(config_json)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            elif "embed_positions" not in name or "decoder" in name:
                param.copy_(0.1 * torch.randn_like(param))
    model.save_pretrained(out_dir)


def forward(model_dir: str, inputs_npz: str, out_npz: str) -> None:
    """Encoder output and decoder logits in float32, plus the loading report."""
    torch.set_num_threads(int(np.load(inputs_npz).get("threads", 2)))
    model, info = WhisperForConditionalGeneration.from_pretrained(
        model_dir, output_loading_info=True, torch_dtype=torch.float32
    )
    model.eval()
    inputs = np.load(inputs_npz)
    with torch.no_grad():
        out = model(
            input_features=torch.from_numpy(inputs["features"]),
            decoder_input_ids=torch.from_numpy(inputs["tokens"]).long(),
        )
    report = {key: sorted(map(str, value)) for key, value in info.items()}
    np.savez(
        out_npz,
        encoder_out=out.encoder_last_hidden_state.numpy(),
        logits=out.logits.numpy(),
        loading_info=np.array(json.dumps(report)),
    )


def generate(model_dir: str, inputs_npz: str, out_npz: str) -> None:
    """Greedy `generate` tokens (prompt excluded) with Whisper's own logit processors."""
    inputs = np.load(inputs_npz)
    torch.set_num_threads(2)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32)
    language = str(inputs["language"]) if "language" in inputs else None
    extra = {"language": language, "task": "transcribe"} if language else {}
    with torch.no_grad():
        sequences = model.generate(
            input_features=torch.from_numpy(inputs["features"]),
            return_timestamps=bool(inputs["timestamps"]),
            max_new_tokens=int(inputs["max_new_tokens"]),
            do_sample=False,
            num_beams=1,
            **extra,
        )
    np.savez(out_npz, tokens=sequences.numpy())


def logit_rules(model_dir: str, inputs_npz: str, out_npz: str) -> None:
    """Whisper's generate-time logits processors (begin-suppress, suppress, timestamps) applied
    to given scores after given token histories (all histories of one length per key)."""
    from transformers import GenerationConfig
    from transformers.generation.logits_process import (
        SuppressTokensAtBeginLogitsProcessor,
        SuppressTokensLogitsProcessor,
        WhisperTimeStampLogitsProcessor,
    )

    config = GenerationConfig.from_pretrained(model_dir)
    inputs = np.load(inputs_npz)
    begin_index = int(inputs["begin_index"])
    processors = [
        SuppressTokensAtBeginLogitsProcessor(config.begin_suppress_tokens, begin_index),
        SuppressTokensLogitsProcessor(config.suppress_tokens),
        WhisperTimeStampLogitsProcessor(config, begin_index=begin_index),
    ]
    results = {}
    for key in inputs.files:
        if not key.startswith("ids_"):
            continue
        ids = torch.from_numpy(inputs[key]).long()
        scores = torch.from_numpy(inputs["scores_" + key[4:]])
        for processor in processors:
            scores = processor(ids, scores)
        results["scores_" + key[4:]] = scores.numpy()
    np.savez(out_npz, **results)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    commands = {
        "random": make_random,
        "forward": forward,
        "generate": generate,
        "logit-rules": logit_rules,
    }
    commands[command](*args)
