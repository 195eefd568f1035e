"""Log-mel throughput: flax-distil's jitted JAX front-end vs transformers' WhisperFeatureExtractor.

    .venv/bin/python run_scripts/bench_logmel.py [--batch 16] [--mels 80] [--threads 2]

Both compute features for the same batch of 30 s clips in this process; prints the ratio.
"""

import argparse

from bench_common import median_seconds, pin_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--mels", type=int, default=80)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    pin_threads(args.threads)

    import jax
    import numpy as np
    from transformers import WhisperFeatureExtractor

    from flax_distil.audio import N_SAMPLES, SAMPLE_RATE, log_mel

    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((args.batch, N_SAMPLES))).astype(np.float32)
    extractor = WhisperFeatureExtractor(feature_size=args.mels)
    clips = list(audio)

    def peer():
        return extractor(clips, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features

    def ours():
        return jax.block_until_ready(log_mel(audio, args.mels))

    max_diff = float(np.abs(np.asarray(ours()) - peer()).max())
    ours_s = median_seconds(ours, args.repeats)
    peer_s = median_seconds(peer, args.repeats)
    print(f"log-mel, batch {args.batch} x 30 s, {args.mels} mels, {args.threads} threads")
    print(f"  flax-distil (jax.jit)       {ours_s * 1e3:8.1f} ms")
    print(f"  WhisperFeatureExtractor     {peer_s * 1e3:8.1f} ms")
    print(f"  speed-up {peer_s / ours_s:.1f}x   (max |difference| {max_diff:.1e})")


if __name__ == "__main__":
    main()
