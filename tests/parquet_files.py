"""A parquet source of several files of tiny clips, for the per-host file sharding tests."""

import io
from pathlib import Path

import numpy as np
import soundfile


def write_parquet_files(
    folder: Path, files: int, rows: int, seconds: float = 0.2, row_group_size: int | None = None
) -> Path:
    """`files` parquet files of `rows` rows each: FLAC clips of `seconds` in `audio` (bytes),
    `text` "file F row R", and their length in `seconds`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for file in range(files):
        audio, texts = [], []
        for row in range(rows):
            buffer = io.BytesIO()
            clip = 0.3 * rng.standard_normal(int(16000 * seconds)).astype(np.float32)
            soundfile.write(buffer, clip, 16000, format="FLAC")
            audio.append({"bytes": buffer.getvalue(), "path": f"f{file}r{row}.flac"})
            texts.append(f"file {file} row {row}")
        table = pa.table({"audio": audio, "text": texts, "seconds": [seconds] * rows})
        pq.write_table(table, folder / f"train-{file:05d}.parquet", row_group_size=row_group_size)
    return folder
