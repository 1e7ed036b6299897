"""The hand-written event-file writer: CRC-32C test vectors, a byte-exact known record, read-back."""
from pathlib import Path

from bicycle_tensorboard.crc32c import crc32c, masked_crc32c
from bicycle_tensorboard.events import FILE_VERSION, EventFileWriter, encode_event, frame, read_events


def test_crc32c_vectors():
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert masked_crc32c(b"") == 0xA282EAD8


def test_event_encoding_matches_protobuf():
    # Event(wall_time=1.0, step=3, summary=Summary(value=[Value(tag="a", simple_value=0.5)])).SerializeToString()
    expected = bytes.fromhex("09000000000000f03f1003" "2a0a" "0a08" "0a0161" "150000003f")
    assert encode_event(1.0, 3, scalars={"a": 0.5}) == expected
    record = frame(expected)
    assert record[:8] == len(expected).to_bytes(8, "little") and len(record) == len(expected) + 16


def test_written_file_reads_back(tmp_path: Path):
    w = EventFileWriter.create(tmp_path, ".test")
    w.add_scalars(1, {"train/G_L1": 0.25, "train/lr": 2e-4}, wall_time=5.0)
    w.add_scalars(2, {"train/G_L1": 0.125}, wall_time=6.0)
    version, scalars = read_events(w.path)
    assert version == FILE_VERSION
    assert w.path.name.startswith("events.out.tfevents.")
    assert [(s.step, s.tag) for s in scalars] == [(1, "train/G_L1"), (1, "train/lr"), (2, "train/G_L1")]
    assert [s.value for s in scalars][::2] == [0.25, 0.125]
    assert abs(scalars[1].value - 2e-4) < 1e-9 and scalars[2].wall_time == 6.0
