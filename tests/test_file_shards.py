"""Per-host file shards of local sources, stopping strategies and hours weighting (hosts
simulated in one process; tests/test_multihost_data.py runs two real processes)."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from flax_distil.data import ExampleStream, Source, SourceSpec
from flax_distil.errors import FlaxDistilError

from .parquet_files import write_parquet_files


def _host_epochs(sources, hosts, epochs=1, **layout):
    """Each simulated host's example ids for `epochs` epochs, and the names of the files it
    opened."""
    ids, opened = [], []
    for host in range(hosts):
        stream = ExampleStream(sources, process_index=host, process_count=hosts, **layout)
        ids.append([[e.id for e in stream.one_epoch()] for _ in range(epochs)])
        opened.append(sorted({Path(f).name for shard in stream.shards for f in shard.opened}))
    return ids, opened


def test_hosts_open_only_their_own_files_and_read_every_row_once(tmp_path):
    folder = write_parquet_files(tmp_path / "shards", files=8, rows=3)
    source = Source(SourceSpec("parquet", str(folder)))
    ids, opened = _host_epochs([source], hosts=2, epochs=2, seed=5, block_size=2)
    assert opened == [[f"train-{f:05d}.parquet" for f in range(h, 8, 2)] for h in range(2)]
    for host in range(2):
        for epoch in ids[host]:  # rows of the host's own files only
            assert {int(i.split("train-")[1][:5]) % 2 for i in epoch} == {host}
    assert ids[0][0] != ids[0][1] and sorted(ids[0][0]) == sorted(ids[0][1])  # reshuffled
    for epoch in range(2):
        union = ids[0][epoch] + ids[1][epoch]
        assert len(union) == len(set(union)) == 24  # every row exactly once
    # 3 hosts: 9, 9 and 6 rows; every host reads 6 per epoch (the same number of batches).
    ids, opened = _host_epochs([source], hosts=3, seed=5, block_size=2)
    assert [len(names) for names in opened] == [3, 3, 2]
    assert [len(host[0]) for host in ids] == [6, 6, 6]
    assert len({i for host in ids for i in host[0]}) == 18


def test_fewer_files_than_hosts_split_a_file_into_row_ranges(tmp_path):
    folder = write_parquet_files(tmp_path / "one", files=1, rows=9, row_group_size=2)
    source = Source(SourceSpec("parquet", str(folder)))
    ids, opened = _host_epochs([source], hosts=3, seed=1)
    assert opened == [["train-00000.parquet"]] * 3
    rows = [sorted(int(i.split("#")[1]) for i in host[0]) for host in ids]
    assert rows == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]  # contiguous, disjoint, all of it


def test_file_shards_read_each_row_group_once_and_resume_exactly(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    folder = write_parquet_files(tmp_path / "groups", files=4, rows=6, row_group_size=2)
    source = Source(SourceSpec("parquet", str(folder), shuffle_buffer=4))
    layout = {"seed": 2, "process_index": 1, "process_count": 2, "block_size": 2}
    reads, read_row_group = [], pq.ParquetFile.read_row_group

    def counted(self, *args, **kwargs):
        reads.append(args[0])
        return read_row_group(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted)
    stream = ExampleStream([source], **layout)
    epoch = [example.id for example in stream.one_epoch()]
    assert len(epoch) == len(set(epoch)) == 12 and len(reads) == 6  # 6 row groups, each once

    def batches(stream, count):
        return [[next(stream).id for _ in range(2)] for _ in range(count)]

    uninterrupted = batches(ExampleStream([source], **layout), 15)  # 6 batches an epoch
    for cut in (4, 7):
        first = ExampleStream([source], **layout)
        assert batches(first, cut) == uninterrupted[:cut]
        resumed = ExampleStream([source], **layout)
        resumed.restore(json.loads(json.dumps(first.state())))
        assert batches(resumed, 15 - cut) == uninterrupted[cut:]
        assert resumed.decoded == 2 * (15 - cut)


def test_stopping_strategies_end_a_mixed_epoch_at_the_first_or_last_source(tmp_path):
    large = Source(SourceSpec("parquet", str(write_parquet_files(tmp_path / "a", 4, 5))))
    small = Source(SourceSpec("parquet", str(write_parquet_files(tmp_path / "b", 1, 6))))

    def counts(strategy):
        stream = ExampleStream([large, small], seed=3, stopping_strategy=strategy)
        ids = [example.id for example in stream.one_epoch()]
        return [
            sorted(ids.count(i) for i in set(ids) if str(s.spec.path) in i) for s in (large, small)
        ]

    first = counts("first_exhausted")
    assert first == [[1] * 6, [1] * 6]  # equal weights: as many from each as the small one has
    every = counts("all_exhausted")
    assert every[0] == [1] * 20  # the large source once ...
    assert sum(every[1]) == 20 and set(every[1]) == {3, 4}  # ... the small one restarted
    with pytest.raises(FlaxDistilError, match="unknown stopping strategy"):
        ExampleStream([large], stopping_strategy="longest")


def test_weight_by_hours_balances_audio_time(tmp_path):
    folder = tmp_path / "long"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(10):  # 0.4 s clips, their length read from the file headers
        soundfile.write(folder / f"{index}.wav", 0.3 * rng.standard_normal(6400), 16000)
    (folder / "metadata.csv").write_text(
        "file_name,text\n" + "".join(f"{i}.wav,long clip {i}\n" for i in range(10))
    )
    short = str(write_parquet_files(tmp_path / "short", 2, 10, seconds=0.2))  # `seconds` column

    def seconds_per_source(weight_by):
        specs = [SourceSpec("audiofolder", str(folder)), SourceSpec("parquet", short)]
        sources = [Source(dataclasses.replace(spec, weight_by=weight_by)) for spec in specs]
        epoch = list(ExampleStream(sources, seed=0).one_epoch())
        return [sum(len(e.audio) for e in epoch if str(folder) in e.id) / 16000, len(epoch)]

    assert seconds_per_source("rows") == [4.0, 20]  # 10 rows of each: 4 s against 2 s
    assert seconds_per_source("hours") == [4.0, 30]  # 10 long and 20 short rows: 4 s each
