"""PyTorch reference oracle, run in the reference environment (.venv-ref: Python 3.11, CPU torch).

The flax-distil tests run under Python >= 3.12, where only a multi-GB CUDA torch build exists;
they call this script as a subprocess instead. It never imports flax_distil.

    python torch_whisper.py random  CONFIG_JSON SEED OUT_DIR
    python torch_whisper.py forward MODEL_DIR INPUTS_NPZ OUT_NPZ
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


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"random": make_random, "forward": forward}[command](*args)
