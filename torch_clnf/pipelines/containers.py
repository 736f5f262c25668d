"""What a video file's container declares about its own length, read from its top-level structure.

A decoder that reaches the end of a truncated file just stops, and the frame count OpenCV reports
is not always the container's: for ASF (WMV) it is estimated from the file's size, so a cut WMV
announces about as many frames as it still holds. The sizes a container writes into its headers
do not shrink with the file; comparing them with the file's length tells a cut file from a whole
one by reading a few headers (a few KB, never the media data).

Walked here, each from its specification: ASF (WMV/WMA), RIFF (AVI, OpenDML's chained RIFF
chunks), ISO BMFF (MP4/MOV/M4V/3GP) and Matroska/WebM (EBML). Anything else, or a file whose
structure cannot be followed, gives no claim (None): a false "truncated" is worse than none.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True)
class Declared:
    """A container's declaration about the file that holds it.

    Attributes:
        container: its name ("ASF", "RIFF", "ISO BMFF", "Matroska").
        length: bytes the file holds.
        size: bytes the container declares, or None where it leaves them unset (ASF broadcast,
            live Matroska, an unfinished RIFF).
        exact: whether ``size`` is the whole file's (ASF's File Size, Matroska's segments);
            otherwise it is where the walk stopped, and a cut file may have been longer still.
        duration: seconds of media the container declares, when it does (ASF).
    """

    container: str
    length: int
    size: int | None
    exact: bool = False
    duration: float | None = None

    @property
    def truncated(self) -> bool:
        return self.size is not None and self.length < self.size

    def problem(self) -> str | None:
        """A summary line when the file is shorter than declared, else None."""
        if not self.truncated:
            return None
        what = {"ASF": "its ASF header announces", "RIFF": "its RIFF chunks announce",
                "ISO BMFF": "its MP4 boxes announce", "Matroska": "its Matroska segment announces"}[self.container]
        return f"truncated or damaged file: {self.length:,} of the {'' if self.exact else 'at least '}" \
               f"{self.size:,} bytes {what}"


def declared(path: str | Path) -> Declared | None:
    """What the container of ``path`` declares (None: not a known container, or not parseable)."""
    try:
        with open(path, "rb") as file:
            length = file.seek(0, 2)
            file.seek(0)
            head = file.read(16)
            for walk in (_asf, _riff, _iso_bmff, _matroska):
                found = walk(file, head, length)
                if found is not None:
                    return found
    except (OSError, ValueError, struct.error):
        pass
    return None


def declared_size_problem(path: str | Path) -> str | None:
    """A "truncated or damaged file: …" line when ``path`` is shorter than its container declares, else None."""
    found = declared(path)
    return found.problem() if found is not None else None


def _read_at(file: BinaryIO, offset: int, count: int) -> bytes:
    file.seek(offset)
    return file.read(count)


# ASF (Advanced Systems Format, WMV/WMA): objects of GUID (16 bytes), size (QWORD, LE), data.
# GUIDs appear in the file in their little-endian byte order.
_ASF_HEADER = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")          # 75B22630-668E-11CF-A6D9-00AA0062CE6C
_ASF_FILE_PROPERTIES = bytes.fromhex("a1dcab8c47a9cf118ee400c00c205365")  # 8CABDCA1-A947-11CF-8EE4-00C00C205365
_ASF_DATA = bytes.fromhex("3626b2758e66cf11a6d900aa0062ce6c")            # 75B22636-668E-11CF-A6D9-00AA0062CE6C
_ASF_BROADCAST = 0x1             # File Properties Flags: sizes, packet count and durations are not set


def _asf(file: BinaryIO, head: bytes, length: int) -> Declared | None:
    """Header Object (its sub-objects: the File Properties Object's File Size, Play Duration,
    Preroll and Flags), then the Data Object that follows it."""
    if head[:16] != _ASF_HEADER:
        return None
    header = _read_at(file, 0, 30)                       # GUID, size, object count, 2 reserved bytes
    if len(header) < 30:
        return Declared("ASF", length, 30)
    header_size, = struct.unpack_from("<Q", header, 16)
    if header_size < 30:
        return None
    file_size = duration = None
    offset = 30
    while offset + 24 <= min(header_size, length):
        guid, size = struct.unpack("<16sQ", _read_at(file, offset, 24))
        if size < 24 or offset + size > header_size:
            break                                        # not a well-formed header: stop reading it
        if guid == _ASF_FILE_PROPERTIES and size >= 104 and offset + 104 <= length:
            fields = _read_at(file, offset + 40, 52)     # File Size … Flags
            file_size, _, _, play, _, preroll, flags = struct.unpack("<6QI", fields)
            if flags & _ASF_BROADCAST:
                return Declared("ASF", length, None)
            duration = play / 1e7 - preroll / 1e3 if play else None   # 100-ns units, preroll in ms
            break
        offset += size
    sizes = [header_size, file_size or 0]
    data = _read_at(file, header_size, 24)
    if len(data) == 24 and data[:16] == _ASF_DATA:
        data_size, = struct.unpack_from("<Q", data, 16)
        if data_size >= 50:                              # smaller: not set (a live stream's)
            sizes.append(header_size + data_size)
    return Declared("ASF", length, max(sizes), exact=bool(file_size) and file_size >= max(sizes),
                    duration=duration if duration and duration > 0 else None)


def _riff(file: BinaryIO, head: bytes, length: int) -> Declared | None:
    """RIFF chunks one after another ("RIFF", size (LE DWORD), form type): an AVI is one, an
    OpenDML AVI larger than 1 GB a "RIFF AVI " followed by "RIFF AVIX" chunks."""
    if head[:4] != b"RIFF" or head[8:12] != b"AVI ":
        return None
    offset = 0
    while offset + 12 <= length:
        chunk = _read_at(file, offset, 12)
        if chunk[:4] != b"RIFF":
            break                                        # whatever follows is no RIFF chunk: stop
        size, = struct.unpack_from("<I", chunk, 4)
        if size in (0, 0xFFFFFFFF) or size < 4:
            return Declared("RIFF", length, None)        # an unfinished (or streamed) file's placeholder
        offset += 8 + size + (size & 1)                  # chunks are padded to even sizes
        if offset > length:
            return Declared("RIFF", length, offset - (size & 1))   # a missing pad byte is no damage
    return Declared("RIFF", length, min(offset, length))


# ISO BMFF (ISO/IEC 14496-12) and QuickTime top-level box types: a box of another type ends the walk.
_BMFF_TOP = {b"ftyp", b"styp", b"pdin", b"moov", b"moof", b"mfra", b"mdat", b"free", b"skip", b"meta", b"sidx",
             b"ssix", b"prft", b"emsg", b"uuid", b"wide", b"pnot", b"meco", b"imda"}
_BMFF_FIRST = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"}
MAX_BOXES = 100_000      # top-level boxes walked at most (a fragmented MP4 has two per fragment)


def _iso_bmff(file: BinaryIO, head: bytes, length: int) -> Declared | None:
    """Top-level boxes: size (BE 32 bits, the header's included), type; size 1: a 64-bit size
    follows the type; size 0: the box runs to the end of the file."""
    if len(head) < 8 or head[4:8] not in _BMFF_FIRST:
        return None
    offset = 0
    for _ in range(MAX_BOXES):
        if offset + 8 > length:
            break
        box = _read_at(file, offset, 16)
        size, kind = struct.unpack_from(">I4s", box)
        if kind not in _BMFF_TOP:
            break
        if size == 0:                                    # to the end of the file: nothing to compare
            return Declared("ISO BMFF", length, length)
        if size == 1:
            if len(box) < 16:
                break
            size, = struct.unpack_from(">Q", box, 8)
            if size < 16:
                break
        elif size < 8:
            break
        offset += size
        if offset > length:
            return Declared("ISO BMFF", length, offset)
    else:
        return Declared("ISO BMFF", length, None)        # too many boxes to walk: no claim
    return Declared("ISO BMFF", length, min(offset, length))


_EBML_HEADER, _SEGMENT, _VOID, _CRC32 = 0x1A45DFA3, 0x18538067, 0xEC, 0xBF


def _vint(data: bytes, at: int, keep_marker: bool) -> tuple[int, int, bool]:
    """An EBML variable-length integer at ``data[at:]``: (value, bytes, all value bits set).
    Element IDs keep their length marker; sizes do not. Raises ValueError when malformed."""
    first = data[at]
    width = 9 - first.bit_length() if first else 9
    if width > 8 or at + width > len(data):
        raise ValueError("not an EBML variable-length integer")
    value = int.from_bytes(data[at:at + width], "big")
    marker = 1 << (7 * width)                            # the width's marker bit, after value's 7·width bits
    ones = value == 2 * marker - 1
    return (value if keep_marker else value - marker), width, ones


def _matroska(file: BinaryIO, head: bytes, length: int) -> Declared | None:
    """Top-level EBML elements: the EBML header, then the Segment (EBML sizes after their IDs;
    a Segment of unknown size, all value bits set, is a live stream's and is not checked)."""
    if head[:4] != _EBML_HEADER.to_bytes(4, "big"):
        return None
    offset, size, live = 0, 0, False
    while offset < length:
        element = _read_at(file, offset, 12)
        try:
            ident, id_width, _ = _vint(element, 0, keep_marker=True)
            body, size_width, unknown = _vint(element, id_width, keep_marker=False)
        except (ValueError, IndexError):
            if offset == 0:
                return None
            break                                        # a cut element header; sized ones already checked
        if ident not in (_EBML_HEADER, _SEGMENT, _VOID, _CRC32):
            break
        if unknown:
            if ident != _SEGMENT:
                return None
            live = True                                  # runs to the end of the file (a live stream)
            break
        offset += id_width + size_width + body
        if offset > length:
            return Declared("Matroska", length, offset, exact=True)
    return Declared("Matroska", length, None if live else min(offset, length), exact=True)
