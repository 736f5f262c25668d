"""Long videos as segments tracked side by side: planning, frame-exact seeking, and the assembly of
one CSV in frame order (tests/pipelines/test_segmented_tracking.py tracks real videos)."""
import csv

import cv2
import numpy as np
import pytest

from torch_clnf.pipelines.assembly import SegmentRows, VideoAssembly, rows_path
from torch_clnf.pipelines.frames import FrameReader, frame_digest
from torch_clnf.pipelines.segments import Segment, segment_counts, split, warmups_per_segment

BITS, BLOCK = 12, 32                      # a frame's index as 12 blocks of 32 x 32 pixels, black or white


def index_frame(k: int) -> np.ndarray:
    """A 4 x 3 grid of blocks spelling ``k`` in binary, on a grey frame that also changes with k."""
    image = np.full((3 * BLOCK + 16, 4 * BLOCK + 16, 3), 60 + k % 50, np.uint8)
    for bit in range(BITS):
        row, col = divmod(bit, 4)
        if k >> bit & 1:
            image[8 + row * BLOCK: 8 + (row + 1) * BLOCK, 8 + col * BLOCK: 8 + (col + 1) * BLOCK] = 255
        else:
            image[8 + row * BLOCK: 8 + (row + 1) * BLOCK, 8 + col * BLOCK: 8 + (col + 1) * BLOCK] = 0
    return image


def read_index(image: np.ndarray) -> int:
    grey = image.mean(2)
    return sum(1 << bit for bit in range(BITS)
               if grey[8 + bit // 4 * BLOCK + BLOCK // 2, 8 + bit % 4 * BLOCK + BLOCK // 2] > 128)


CODECS = [("mjpg.avi", "MJPG"), ("mp4v.mp4", "mp4v"), ("xvid.avi", "XVID"), ("wmv2.wmv", "WMV2")]


@pytest.fixture(scope="module")
def index_videos(tmp_path_factory):
    """The same 300 frames, each showing its own index, in every container and codec the tests use."""
    folder = tmp_path_factory.mktemp("indexed")
    written = []
    for name, fourcc in CODECS:
        writer = cv2.VideoWriter(str(folder / name), cv2.VideoWriter_fourcc(*fourcc), 30, index_frame(0).shape[1::-1])
        if not writer.isOpened():
            continue
        for k in range(300):
            writer.write(index_frame(k))
        writer.release()
        written.append(folder / name)
    images = folder / "images"
    images.mkdir()
    for k in range(40):
        cv2.imwrite(str(images / f"{k:04d}.png"), index_frame(k))
    return written + [images]


def test_a_segment_reads_the_frames_a_sequential_decode_numbers_so(index_videos):
    assert len(index_videos) >= 4                       # MJPG, MPEG-4 (mp4 and AVI) at least, and the folder
    for source in index_videos:
        sequential = [(f.index, read_index(f.image)) for f in FrameReader(source)]
        count = len(sequential)
        assert [i for i, _ in sequential] == [k for _, k in sequential] == list(range(count)), source
        for start in (1, count // 3, count // 2 + 7, count - 5):
            found = [(f.index, read_index(f.image)) for f in FrameReader(source, start=start, stop=start + 5)]
            assert found == [(k, k) for k in range(start, min(start + 5, count))], (source.name, start, found)


def test_frames_carry_digests_equal_for_equal_decodes(index_videos):
    source = index_videos[0]
    first = [f.digest for f in FrameReader(source, digests=True, stop=20)]
    again = [f.digest for f in FrameReader(source, start=10, stop=20, digests=True)]
    assert first[10:] == again and len(set(first)) == 20 and FrameReader(source, stop=1).__iter__().__next__().digest is None
    assert frame_digest(index_frame(3)) == frame_digest(index_frame(3).copy()) != frame_digest(index_frame(4))


def test_segments_cover_the_video_with_warm_ups_and_margins(tmp_path):
    parts = split(tmp_path, 0, 1000, 4, warmup=16, margin=8)
    assert [(p.first, p.last, p.read_from, p.read_to) for p in parts] == [
        (0, 250, 0, 258), (250, 500, 234, 508), (500, 750, 484, 758), (750, None, 734, None)]
    assert len(split(tmp_path, 0, 30, 8, warmup=16, margin=8)) == 1          # too short to cut
    assert segment_counts([9000, 9000, 300], [True, False, True], slots=16, segments=None) == [8, 1, 1]
    assert segment_counts([9000, 300, 0], [True, True, True], slots=16, segments=3) == [3, 3, 1]
    assert segment_counts([9000], [True], slots=16, segments=1) == [1]
    # compiled fits on a CPU: longer segments (lockstep gains them 1.3x, not 3x): a short video whole
    compiled = warmups_per_segment(True)
    assert segment_counts([288], [True], slots=8) == [7]
    assert segment_counts([288], [True], slots=8, warmups=compiled) == [1]
    assert segment_counts([9000], [True], slots=16, warmups=compiled) == [16]


# the assembly, on rows files written here: 68 landmarks, 34 modes

POINTS, MODES, COLUMNS = 68, 34, 14 + 5 * 68 + 34


def fake_result(x: float, success: bool = True):
    """One face whose landmarks all lie at (x + i / 10, 100)."""
    import torch

    from torch_clnf.landmark_model import FitResult

    landmarks = torch.stack([x + torch.arange(POINTS, dtype=torch.float64) / 10, torch.full((POINTS,), 100.0)], -1)
    return FitResult(landmarks[None], torch.zeros(1, POINTS, 3), torch.zeros(1, 6), torch.zeros(1, 6),
                     torch.zeros(1, MODES), torch.ones(1), torch.tensor([success]), torch.zeros(1),
                     torch.zeros(1, dtype=torch.long))


def write_segment(output, segment: Segment, track, shift=0, frames=100):
    """A segment's rows file: frame f (as its reader numbers it; the true frame f + shift) holds the
    faces ``track(true frame)`` gives, as (face number, x) pairs."""
    rows = SegmentRows(rows_path(output, segment.number), COLUMNS)
    end = segment.read_to if segment.read_to is not None else frames
    for frame in range(segment.read_from, end):
        faces = track(frame + shift)
        for face, x in faces or [(-1, None)]:
            rows.write(frame, face, None if x is None else fake_result(x), False, False, f"d{frame + shift}")
    rows.close()


def assembled(output, end=".csv"):
    """The assembled CSV's rows (``end`` ".csv.part": of a video not tracked to its end)."""
    with open(output.with_name(output.name + end)) as f:
        return [(int(r["frame"]) - 1, int(r["face_id"]), r["success"], float(r["x_0"])) for r in csv.DictReader(f)]


def test_segments_are_assembled_in_frame_order_with_corrected_numbers_and_carried_ids(tmp_path):
    """Three segments of 100 frames; the second's seek landed 2 frames late (its numbers corrected
    from the digests), the third starts with another face number for the same person (carried over)
    and finds a second face (a new number)."""
    output = tmp_path / "video"
    parts = split(tmp_path / "video.avi", 0, 100, 3, warmup=6, margin=4)
    write_segment(output, parts[0], lambda f: [(0, 10.0 + f)])
    write_segment(output, parts[1], lambda f: [(0, 10.0 + f + (0.5 if f < 35 else 0))], shift=2)   # converges at 35
    write_segment(output, parts[2], lambda f: [(3, 10.0 + f)] + ([(4, 500.0)] if f >= 90 else []))
    assembly = VideoAssembly(parts, output, 10.0, POINTS, MODES)
    for k in (2, 0, 1):                                         # in any order
        assembly.finished(k, [])
        assembly.pump()
    summary = assembly.close()
    rows = assembled(output)
    assert summary.complete and summary.csv == output.with_name("video.csv")
    assert [f for f, face, _, _ in rows if face == 0] == list(range(100))     # every frame once, in order
    assert all(x == pytest.approx(10.0 + f, abs=1e-3) for f, face, _, x in rows if face == 0)
    assert [(f, face) for f, face, _, _ in rows if face != 0] == [(f, 1) for f in range(90, 100)]
    assert summary.counts["frames"] == 100 and "seek landed +2 frames off" in " ".join(summary.problems)
    assert not list(tmp_path.glob("*.tmp*"))                  # the rows files are gone


def first_and_last_of_three(tmp_path):
    """90 frames in 3 segments, only the first's and the last's rows written, both finished."""
    output = tmp_path / "video"
    parts = split(tmp_path / "video.avi", 0, 90, 3, warmup=6, margin=4)
    write_segment(output, parts[0], lambda f: [(0, 1.0)], frames=90)
    write_segment(output, parts[2], lambda f: [(0, 1.0)], frames=90)
    assembly = VideoAssembly(parts, output, 10.0, POINTS, MODES)
    assembly.finished(0, [])
    assembly.finished(2, [])
    return output, assembly


def test_a_segment_that_did_not_finish_leaves_success_0_rows_and_says_so(tmp_path):
    output, assembly = first_and_last_of_three(tmp_path)
    assembly.finished(1, failure="worker process failed: killed")
    summary = assembly.close()
    rows = assembled(output, ".csv.part")                      # not complete: the next run tracks it again
    assert not summary.complete and not output.with_name("video.csv").exists()
    assert [f for f, _, _, _ in rows] == list(range(90))
    assert {s for f, _, s, _ in rows if 30 <= f < 60} == {"0"} and {s for f, _, s, _ in rows if f < 30} == {"1"}
    assert any("frames 31–60 (segment 2 of 3) were not tracked to the end: worker process failed" in p
               for p in summary.problems)


def test_a_stopped_run_keeps_the_frames_tracked_without_a_gap(tmp_path):
    output, assembly = first_and_last_of_three(tmp_path)
    assembly.close(stopped=True)
    assert [f for f, _, _, _ in assembled(output, ".csv.part")] == list(range(34))        # the first segment's, margin too
