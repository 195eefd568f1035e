"""Streaming sources (`SourceSpec(streaming=True)`): same examples, host shares, mixing, resume."""

import json

import datasets
import numpy as np
import pytest

from flax_distil.data import ExampleStream, Source, SourceSpec
from flax_distil.errors import FlaxDistilError

from .conftest import NUM_CLIPS


def _streaming(parquet_dir, kind="parquet", **options):
    options = {"text_column": "sentence", "streaming": True, "shuffle_buffer": 8, **options}
    return Source(SourceSpec(kind, str(parquet_dir), **options))


def _epoch(sources, **options):
    return list(ExampleStream(sources, **options).one_epoch())


@pytest.mark.parametrize("kind", ["parquet", "hub"])  # hub: load_dataset(local path)
def test_streaming_source_gives_the_map_style_examples(corpus, kind):
    _, parquet_dir = corpus
    streaming = _streaming(parquet_dir, kind)
    assert isinstance(streaming.table, datasets.IterableDataset)
    mapped = Source(SourceSpec("parquet", str(parquet_dir), text_column="sentence"))
    expected = {example.text: example.audio for example in _epoch([mapped], seed=0)}
    streamed = _epoch([streaming], seed=0)
    assert len(streamed) == NUM_CLIPS
    assert sorted(example.text for example in streamed) == sorted(expected)
    for example in streamed:
        np.testing.assert_array_equal(example.audio, expected[example.text])
    number = example.text.split()[-1]  # a streamed row is named by its audio file
    assert example.id == f"{parquet_dir}#clip{int(number):02d}.flac"


def test_streaming_order_is_seeded_and_reshuffled_every_epoch(corpus):
    _, parquet_dir = corpus
    source = _streaming(parquet_dir)
    stream = ExampleStream([source], seed=5)
    epochs = [[example.text for example in stream.one_epoch()] for _ in range(2)]
    again = ExampleStream([source], seed=5)
    assert [example.text for example in again.one_epoch()] == epochs[0]
    other_seed = [example.text for example in ExampleStream([source], seed=6).one_epoch()]
    assert epochs[1] != epochs[0] and other_seed != epochs[0]
    assert sorted(epochs[1]) == sorted(epochs[0])  # each epoch is the whole dataset once
    unshuffled = [f"utterance number {index}" for index in range(NUM_CLIPS)]
    assert epochs[0] != unshuffled


def test_two_hosts_read_disjoint_blocks_that_make_the_single_host_batches(corpus):
    _, parquet_dir = corpus
    source = _streaming(parquet_dir)
    single = [example.id for example in _epoch([source], seed=3, block_size=4)]
    hosts = [
        [e.id for e in _epoch([source], seed=3, process_index=h, process_count=2, block_size=2)]
        for h in range(2)
    ]
    assert not set(hosts[0]) & set(hosts[1])
    assert sorted(hosts[0] + hosts[1]) == sorted(single) and len(single) == NUM_CLIPS
    # Host 0's batch of 2 beside host 1's is the single host's batch of 4, batch after batch.
    side_by_side = [
        example_id
        for step in range(NUM_CLIPS // 4)
        for host in hosts
        for example_id in host[2 * step : 2 * step + 2]
    ]
    assert side_by_side == single


def test_partial_last_round_is_left_out_on_every_host(corpus):
    _, parquet_dir = corpus
    source = _streaming(parquet_dir)  # 20 rows, rounds of 2 hosts x 3: 18 read, 2 left out
    hosts = [
        _epoch([source], seed=1, process_index=h, process_count=2, block_size=3) for h in range(2)
    ]
    assert [len(host) for host in hosts] == [9, 9]
    with pytest.raises(FlaxDistilError, match="fewer than one global batch of 24"):
        next(ExampleStream([source], process_count=2, block_size=12))


@pytest.mark.parametrize("process_index", [0, 1])
def test_resume_continues_exactly_without_decoding_again(corpus, process_index):
    _, parquet_dir = corpus
    source, batch = _streaming(parquet_dir), 2
    layout = {"seed": 2, "process_index": process_index, "process_count": 2, "block_size": batch}

    def batches(stream, count):
        return [[next(stream).id for _ in range(batch)] for _ in range(count)]

    uninterrupted = batches(ExampleStream([source], **layout), 57)
    first = ExampleStream([source], **layout)
    assert batches(first, 37) == uninterrupted[:37]  # 37 batches of a 10-example share: epoch 7
    saved = json.loads(json.dumps(first.state()))
    resumed = ExampleStream([source], **layout)
    resumed.restore(saved)
    assert batches(resumed, 20) == uninterrupted[37:]
    assert resumed.decoded == 20 * batch  # rows before the saved position were not decoded


def test_streaming_mixes_with_map_style_sources_by_weight(corpus):
    folder, parquet_dir = corpus
    sources = [
        Source(SourceSpec("audiofolder", str(folder), weight=3.0)),
        _streaming(parquet_dir, weight=1.0),
    ]
    epoch = [example.id for example in _epoch(sources, seed=9)]
    assert epoch == [example.id for example in _epoch(sources, seed=9)]
    assert len(set(epoch)) == len(epoch)  # nothing twice in an epoch
    from_folder = sum(str(folder) in example_id for example_id in epoch)
    assert from_folder == NUM_CLIPS  # the epoch ends when the first source (3:1) runs out
    assert 0.55 * len(epoch) < from_folder < len(epoch)  # about 75% from the first source
    # Exact resume across the mix, with neither source decoded again.
    uninterrupted = ExampleStream(sources, seed=9)
    reference = [next(uninterrupted).id for _ in range(70)]
    first = ExampleStream(sources, seed=9)
    for _ in range(45):
        next(first)
    resumed = ExampleStream(sources, seed=9)
    resumed.restore(json.loads(json.dumps(first.state())))
    assert [next(resumed).id for _ in range(25)] == reference[45:]
    assert resumed.decoded == 25


def test_streaming_errors_are_one_clear_line(corpus):
    folder, parquet_dir = corpus
    with pytest.raises(FlaxDistilError, match="streaming applies to hub and parquet sources"):
        SourceSpec("audiofolder", str(folder), streaming=True)
    source = _streaming(parquet_dir)
    with pytest.raises(FlaxDistilError, match="is streaming: it has no length"):
        len(source)
    with pytest.raises(FlaxDistilError, match=r"no column\(s\) \['text'\].*sentence"):
        Source(SourceSpec("parquet", str(parquet_dir), streaming=True))
