"""PyTorch reference oracle, run in the reference environment (.venv-ref: Python 3.11, CPU torch).

The flax-distil tests run under Python >= 3.12, where only a multi-GB CUDA torch build exists;
they call this script as a subprocess instead. It never imports flax_distil.

    python torch_whisper.py random  CONFIG_JSON SEED OUT_DIR
    python torch_whisper.py forward MODEL_DIR INPUTS_NPZ OUT_NPZ
    python torch_whisper.py generate MODEL_DIR INPUTS_NPZ OUT_NPZ
    python torch_whisper.py logit-rules MODEL_DIR INPUTS_NPZ OUT_NPZ
    python torch_whisper.py long-form MODEL_DIR INPUTS_NPZ OUT_JSON
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


def long_form(model_dir: str, inputs_npz: str, out_json: str) -> None:
    """Sequential long-form `generate` (timestamps, previous-text conditioning, temperature
    fallback, no-speech skipping) on one recording: its segments, and every fallback decision
    with the statistics it was made on (average log-probability, no-speech probability)."""
    from transformers import WhisperFeatureExtractor
    from transformers.generation.logits_process import WhisperNoSpeechDetection
    from transformers.models.whisper import generation_whisper

    inputs = np.load(inputs_npz)
    torch.set_num_threads(2)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir, torch_dtype=torch.float32)
    audio = inputs["audio"]
    features = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)(
        audio,
        sampling_rate=16000,
        return_tensors="pt",
        truncation=False,
        padding="longest",
        return_attention_mask=True,
    )
    decisions, average = [], {}
    mixin = generation_whisper.WhisperGenerationMixin
    plain_average, plain_need_fallback = mixin._retrieve_avg_logprobs, mixin._need_fallback

    def recording_average(scores, tokens, temperature):
        average["value"] = float(plain_average(scores, tokens, temperature))
        return average["value"]

    def recording_need_fallback(self, sequence, outputs, index, processors, config, *rest):
        temperature = rest[-1]
        needs, skip = plain_need_fallback(self, sequence, outputs, index, processors, config, *rest)
        no_speech = generation_whisper._get_attr_from_logit_processors(
            processors, WhisperNoSpeechDetection, "no_speech_prob"
        )
        decisions.append(
            {
                "temperature": float(temperature),
                "avg_logprob": average.get("value"),
                "no_speech_prob": float(no_speech[index]),
                "fallback": bool(needs),
                "skip": bool(skip),
                "tokens": [int(t) for t in sequence],
            }
        )
        return needs, skip

    mixin._retrieve_avg_logprobs = staticmethod(recording_average)
    mixin._need_fallback = recording_need_fallback
    with torch.no_grad():
        out = model.generate(
            input_features=features.input_features,
            attention_mask=features.attention_mask,
            return_timestamps=True,
            condition_on_prev_tokens=True,
            temperature=tuple(float(t) for t in inputs["temperatures"]),
            compression_ratio_threshold=float(inputs["compression_ratio_threshold"]),
            logprob_threshold=float(inputs["logprob_threshold"]),
            no_speech_threshold=float(inputs["no_speech_threshold"]),
            return_segments=True,
            do_sample=False,
        )
    segments = [
        {"start": float(s["start"]), "end": float(s["end"]), "tokens": s["tokens"].tolist()}
        for s in out["segments"][0]
    ]
    with open(out_json, "w") as handle:
        json.dump({"segments": segments, "decisions": decisions}, handle)


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
        "long-form": long_form,
    }
    commands[command](*args)
