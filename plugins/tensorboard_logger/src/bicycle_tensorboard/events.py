"""TensorBoard event files without tensorboard or protobuf: TFRecord framing + hand-encoded protos.

Record: uint64 length (little endian), uint32 masked_crc32c(length bytes), data, uint32 masked_crc32c(data).
Data: a serialized ``tensorflow.Event``:
    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; }
The first record of a file carries ``file_version = "brain.Event:2"``.
"""
from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from bicycle_tensorboard.crc32c import masked_crc32c

FILE_VERSION = "brain.Event:2"
PREFIX = "events.out.tfevents."


# -- protobuf wire format (just what Event needs) -----------------------------------------------------
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 negatives are 10-byte varints
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _bytes_field(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def encode_event(wall_time: float, step: int, *, file_version: str | None = None,
                 scalars: dict[str, float] | None = None) -> bytes:
    """A serialized Event with either a file_version or a summary of simple_value scalars."""
    out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(step)
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        values = b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", value))
                          for tag, value in scalars.items())
        out += _bytes_field(5, values)
    return out


def frame(data: bytes) -> bytes:
    """One TFRecord around ``data``."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


# -- writer --------------------------------------------------------------------------------------------
class EventFileWriter:
    """Appends events to one file in ``folder``. Each call opens, appends and closes: no handle is held,
    so a crash loses nothing written and the writer can be re-created from the path alone."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, folder: Path, suffix: str = "") -> EventFileWriter:
        """A new file ``events.out.tfevents.<seconds>.<host><suffix>`` starting with the file_version event."""
        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        path = folder / f"{PREFIX}{int(now):010d}.{socket.gethostname()}{suffix}"
        path.write_bytes(frame(encode_event(now, 0, file_version=FILE_VERSION)))
        return cls(path)

    def add_scalars(self, step: int, scalars: dict[str, float], wall_time: float | None = None) -> None:
        record = frame(encode_event(time.time() if wall_time is None else wall_time, step, scalars=scalars))
        with open(self.path, "ab") as f:
            f.write(record)


# -- reader (for tests and for users without tensorboard) -----------------------------------------------
@dataclass(frozen=True)
class Scalar:
    step: int
    tag: str
    value: float
    wall_time: float


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes):
    """(field number, wire type, value) of a message: ints for varint, bytes for fixed and length-delimited."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        elif wire == 2:
            n, pos = _read_varint(data, pos)
            value, pos = data[pos:pos + n], pos + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def read_records(path: Path) -> list[bytes]:
    """Every record's data, with both CRCs verified (ValueError naming the file and offset otherwise)."""
    raw = path.read_bytes()
    out, pos = [], 0
    while pos < len(raw):
        header = raw[pos:pos + 8]
        if len(header) < 8 or struct.unpack("<I", raw[pos + 8:pos + 12])[0] != masked_crc32c(header):
            raise ValueError(f"{path}: bad length CRC at offset {pos}")
        (n,) = struct.unpack("<Q", header)
        data = raw[pos + 12:pos + 12 + n]
        if len(data) < n or struct.unpack("<I", raw[pos + 12 + n:pos + 16 + n])[0] != masked_crc32c(data):
            raise ValueError(f"{path}: bad data CRC at offset {pos}")
        out.append(data)
        pos += 16 + n
    return out


def read_events(path: Path) -> tuple[str | None, list[Scalar]]:
    """(file_version, scalars) of an event file."""
    version, scalars = None, []
    for record in read_records(path):
        wall, step, summary = 0.0, 0, b""
        for field, _, value in _fields(record):
            if field == 1:
                (wall,) = struct.unpack("<d", value)
            elif field == 2:
                step = value - (1 << 64) if value >= 1 << 63 else value
            elif field == 3:
                version = value.decode()
            elif field == 5:
                summary = value
        for field, _, value_msg in _fields(summary):
            tag, number = "", float("nan")
            for f2, _, v2 in _fields(value_msg):
                if f2 == 1:
                    tag = v2.decode()
                elif f2 == 2:
                    (number,) = struct.unpack("<f", v2)
            scalars.append(Scalar(step, tag, number, wall))
    return version, scalars
