"""Frame decoding: videos, image folders, and damaged input reported rather than raised."""
import re
import struct

import cv2
import numpy as np
import pytest

from torch_clnf.pipelines import FrameReader, video_sources
from torch_clnf.pipelines.containers import declared, declared_size_problem


def write_video(path, frames=20, size=(96, 64)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    for k in range(frames):
        writer.write(np.random.default_rng(k).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    return path


def test_video_frames_indices_and_timestamps(media_dir):
    reader = FrameReader(media_dir / "changeLighting.wmv")
    frames = list(reader)
    assert len(frames) == 88 and reader.fps == 15
    assert [f.index for f in frames] == list(range(88))
    assert frames[15].timestamp == 1.0 and frames[0].image.shape == (480, 640, 3)
    assert reader.problems == []                   # two frames short of the header's estimate is normal for WMV


def test_truncated_video_is_reported(tmp_path):
    data = write_video(tmp_path / "whole.avi").read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    reader = FrameReader(cut)
    frames = list(reader)
    assert 0 < len(frames) < 20 and all(f.image is not None for f in frames)
    assert any("ended after" in p for p in reader.problems), reader.problems


def test_unreadable_and_missing_files(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    for path, problem in ((junk, "not a readable video"), (tmp_path / "absent.avi", "file not found")):
        reader = FrameReader(path)
        assert list(reader) == [] and not reader.readable
        assert any(problem in p for p in reader.problems)


def test_image_folder_with_a_corrupt_image(tmp_path):
    for k in range(3):
        cv2.imwrite(str(tmp_path / f"{k:03d}.png"), np.full((20, 30, 3), k, np.uint8))
    (tmp_path / "001.png").write_bytes(b"not an image")
    frames = list(FrameReader(tmp_path))
    assert [f.image is None for f in frames] == [False, True, False]
    assert "001.png" in frames[1].error and frames[2].timestamp == 2 / 30


def test_sources_from_a_folder(tmp_path, media_dir):
    (tmp_path / "b.avi").touch()
    (tmp_path / "a.mp4").touch()
    (tmp_path / "notes.txt").touch()
    assert video_sources([tmp_path]) == [tmp_path / "a.mp4", tmp_path / "b.avi"]
    assert video_sources([media_dir / "image_sequence"]) == [media_dir / "image_sequence"]


# damaged input: the container's declared sizes against the file's length (torch_clnf.pipelines.containers)

SAMPLE_VIDEOS = ["default.wmv", "changeLighting.wmv", "2015-10-15-15-14.avi", "multi_face.avi", "video01.mp4"]


def head_of(source, size, path):
    """The first ``size`` bytes of ``source``, written to ``path`` (a cut download)."""
    with open(source, "rb") as file:
        path.write_bytes(file.read(size))
    return path


def truncations(problems):
    return [p for p in problems if "truncated" in p]


@pytest.mark.parametrize("name", SAMPLE_VIDEOS)
def test_intact_sample_videos_have_no_problem(media_dir, name):
    found = declared(media_dir / name)
    assert found is not None and not found.truncated and found.size == found.length
    reader = FrameReader(media_dir / name)
    assert sum(f.image is not None for f in reader) > 0
    assert reader.problems == []


@pytest.mark.parametrize("name", ["default.wmv", "changeLighting.wmv"])
def test_truncated_wmv_is_reported(tmp_path, media_dir, name):
    whole = (media_dir / name).stat().st_size
    reader = FrameReader(head_of(media_dir / name, 100_000, tmp_path / name))
    frames = list(reader)
    assert frames and frames[0].image is not None
    assert len(reader.problems) == 1 and reader.problems == truncations(reader.problems), reader.problems
    assert f"100,000 of the {whole:,} bytes its ASF header announces" in reader.problems[0]
    assert f"video ended after {len(frames)} frames" in reader.problems[0]


def test_truncated_avi_is_reported_once(tmp_path, media_dir):
    reader = FrameReader(head_of(media_dir / "2015-10-15-15-14.avi", 300_000, tmp_path / "cut.avi"))
    frames = list(reader)
    assert 0 < len(frames) < 842
    assert len(reader.problems) == 1, reader.problems             # the frame count's finding is in the same line
    assert "300,000 of the at least 3,697,706 bytes its RIFF chunks announce" in reader.problems[0]
    assert f"ended after {len(frames)} of the 842 frames" in reader.problems[0]


def test_truncated_mp4_written_by_opencv(tmp_path):
    whole = tmp_path / "whole.mp4"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    for k in range(30):
        writer.write(np.random.default_rng(k).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    writer.release()
    data = whole.read_bytes()
    assert declared(whole).container == "ISO BMFF" and declared_size_problem(whole) is None
    for cut in (len(data) // 2, len(data) - 100):                 # in the media data; in the last box
        path = tmp_path / f"cut{cut}.mp4"
        path.write_bytes(data[:cut])
        assert f"{cut:,} of the at least" in declared_size_problem(path)
        reader = FrameReader(path)
        list(reader)
        assert len(truncations(reader.problems)) == 1, reader.problems


def test_wmv_ending_short_of_its_duration(tmp_path, media_dir):
    """A WMV zeroed after 100 KB keeps its sizes: its last frame's time, against its play duration, tells."""
    data = (media_dir / "default.wmv").read_bytes()
    path = tmp_path / "zeroed.wmv"
    path.write_bytes(data[:100_000] + bytes(len(data) - 100_000))
    reader = FrameReader(path)
    frames = list(reader)
    assert 0 < len(frames) < 30 and declared_size_problem(path) is None
    assert len(reader.problems) == 1, reader.problems
    assert re.fullmatch(rf"video ended after {len(frames)} frames, at \d\.\d s of the 19\.2 s its header announces "
                        r"\(truncated or damaged file\)", reader.problems[0]), reader.problems


# the container walks, on bytes built here

ASF_HEADER = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
ASF_FILE_PROPERTIES = bytes.fromhex("a1dcab8c47a9cf118ee400c00c205365")
ASF_DATA = bytes.fromhex("3626b2758e66cf11a6d900aa0062ce6c")


def asf(file_size, data_size, flags=0x2, packets=b"", play=200_000_000, preroll=3000):
    """An ASF file: a Header Object holding a File Properties Object, then a Data Object."""
    properties = ASF_FILE_PROPERTIES + struct.pack("<Q16s6QI3I", 104, bytes(16), file_size, 0, 10, play, play,
                                                   preroll, flags, 3200, 3200, 100_000)
    header = ASF_HEADER + struct.pack("<QIBB", 30 + len(properties), 1, 1, 2) + properties
    return header + ASF_DATA + struct.pack("<Q16sQH", data_size, bytes(16), 10, 0x101) + packets


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_asf_walk(tmp_path):
    whole = asf(134 + 50 + 1000, 50 + 1000, packets=bytes(1000))
    found = declared(write(tmp_path, "whole.wmv", whole))
    assert (found.container, found.size, found.length, found.duration) == ("ASF", 1184, 1184, 17.0)
    assert declared_size_problem(write(tmp_path, "cut.wmv", whole[:600])) == \
        "truncated or damaged file: 600 of the 1,184 bytes its ASF header announces"
    # File Size unset (0): the Data Object's size still tells; cut inside the header: its size does
    assert "600 of the at least 1,184 bytes" in declared_size_problem(write(tmp_path, "a.wmv", asf(0, 1050, packets=bytes(1000))[:600]))
    assert "100 of the at least 134 bytes" in declared_size_problem(write(tmp_path, "b.wmv", whole[:100]))
    # the broadcast flag: sizes, packet count and duration are not set
    broadcast = asf(0xFFFF_FFFF, 0, flags=0x1, packets=bytes(1000))
    assert declared(write(tmp_path, "live.wmv", broadcast)).size is None
    assert declared_size_problem(write(tmp_path, "live2.wmv", broadcast[:600])) is None


def riff(form, payload):
    return b"RIFF" + struct.pack("<I", 4 + len(payload)) + form + payload


def test_riff_walk(tmp_path):
    first = riff(b"AVI ", b"LIST" + struct.pack("<I", 4) + b"hdrl" + bytes(101))   # odd: a pad byte follows,
    # which a writer may leave out at the end of the file: 125 bytes are declared
    opendml = first + b"\0" + riff(b"AVIX", bytes(2000))
    for data in (first, first + b"\0", opendml):
        assert declared_size_problem(write(tmp_path, "whole.avi", data)) is None
    assert declared_size_problem(write(tmp_path, "cut.avi", opendml[:1000])) == \
        f"truncated or damaged file: 1,000 of the at least {len(opendml):,} bytes its RIFF chunks announce"
    assert "50 of the at least 125 bytes" in declared_size_problem(write(tmp_path, "cut.avi", opendml[:50]))
    # an unfinished file's placeholder sizes, a RIFF that is no AVI: no claim
    assert declared_size_problem(write(tmp_path, "open.avi", b"RIFF\0\0\0\0AVI " + bytes(500))) is None
    assert declared(write(tmp_path, "a.wav", riff(b"WAVE", bytes(100))[:50])) is None


def box(kind, payload=b"", large=False):
    if large:
        return struct.pack(">I4sQ", 1, kind, 16 + len(payload)) + payload
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def test_iso_bmff_walk(tmp_path):
    head = box(b"ftyp", b"isom\0\0\2\0isomiso2mp41") + box(b"moov", bytes(300))
    for data in (head + box(b"mdat", bytes(5000)), head + box(b"mdat", bytes(5000), large=True),
                 head + struct.pack(">I4s", 0, b"mdat") + bytes(5000)):         # 32-bit, 64-bit, to the end
        assert declared_size_problem(write(tmp_path, "whole.mp4", data)) is None
        assert declared(write(tmp_path, "whole.mp4", data)).size == len(data)
    for data in (head + box(b"mdat", bytes(5000)), head + box(b"mdat", bytes(5000), large=True)):
        cut = write(tmp_path, "cut.mp4", data[:2000])
        assert declared_size_problem(cut) == \
            f"truncated or damaged file: 2,000 of the at least {len(data):,} bytes its MP4 boxes announce"
    # the size-0 box runs to wherever the file ends; an unknown box type ends the walk without a claim
    assert declared_size_problem(write(tmp_path, "a.mp4", (head + struct.pack(">I4s", 0, b"mdat"))[:1000])) is None
    assert declared_size_problem(write(tmp_path, "b.mp4", head + box(b"zzzz", bytes(5000))[:100])) is None


def ebml_id(value):
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def ebml_size(value, width=8):
    return ((1 << (7 * width)) | value).to_bytes(width, "big")


def matroska(segment_size, body, width=8):
    header = ebml_id(0x1A45DFA3) + ebml_size(19, 1) + ebml_id(0x4282) + ebml_size(8, 1) + b"matroska" + \
        ebml_id(0x4287) + ebml_size(1, 1) + b"\4" + ebml_id(0x4285) + ebml_size(1, 1) + b"\2"
    return header + ebml_id(0x18538067) + ebml_size(segment_size, width) + body


def test_matroska_walk(tmp_path):
    whole = matroska(1000, bytes(1000))
    assert declared_size_problem(write(tmp_path, "whole.mkv", whole)) is None
    assert declared(write(tmp_path, "whole.mkv", whole)).size == len(whole) == 24 + 12 + 1000
    assert declared_size_problem(write(tmp_path, "cut.mkv", matroska(1000, bytes(1000), width=4)[:500])) == \
        "truncated or damaged file: 500 of the 1,032 bytes its Matroska segment announces"
    assert "500 of the 1,036 bytes" in declared_size_problem(write(tmp_path, "cut.webm", whole[:500]))
    # unknown size (all value bits set): a live stream, no claim
    assert declared(write(tmp_path, "live.webm", matroska((1 << 56) - 1, bytes(1000)))).size is None
    assert declared_size_problem(write(tmp_path, "live.mkv", matroska((1 << 28) - 1, bytes(1000), 4))) is None


def test_other_files_give_no_claim(tmp_path, media_dir):
    assert declared(media_dir / "sample1.jpg") is None
    assert declared(write(tmp_path, "junk.mp4", np.random.default_rng(0).bytes(5000))) is None
    assert declared(write(tmp_path, "empty.avi", b"")) is None
    assert declared(tmp_path / "absent.mkv") is None and declared(tmp_path) is None
