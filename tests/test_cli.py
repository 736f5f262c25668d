import pytest

from torch_clnf.cli import _loader, build_parser, main


def test_convert_prints_a_summary(models_dir, tmp_path, capsys):
    assert main(["convert", "main_clnf_general.txt", "--models", str(models_dir), "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "main_clnf_general.txt: CLNF (CCNF), 68 landmarks, 34 modes, patch scales 0.25, 0.35, 0.5, " \
           "parts inner, left_eye_28, right_eye_28" in out
    assert str(tmp_path) in out
    assert len(list(tmp_path.glob("*.safetensors"))) == 1


def test_missing_spec_is_a_clear_error(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "absent.txt"), "--cache", str(tmp_path)]) == 2
    assert "absent.txt: model spec not found" in capsys.readouterr().err


def test_broken_model_file_names_the_file(models_dir, tmp_path, capsys):
    for item in models_dir.iterdir():
        (tmp_path / item.name).symlink_to(item)
    (tmp_path / "pdms").unlink()
    (tmp_path / "pdms").mkdir()
    (tmp_path / "pdms/In-the-wild_aligned_PDM_68.txt").write_text("# truncated\n204\n1\n6\n1.0\n")
    assert main(["convert", str(tmp_path / "main_clnf_general.txt"), "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert "In-the-wild_aligned_PDM_68.txt, line 5: file ends, expected mean shape element 1 of 204" in err


def test_image_command_writes_csv_and_drawing(models_dir, media_dir, reference_dir, tmp_path, capsys, monkeypatch):
    import csv

    import cv2
    import numpy as np

    from reference import landmarks, rows

    monkeypatch.setenv("TORCH_CLNF_CACHE", str(tmp_path / "cache"))
    record = rows(reference_dir / "openface_cpp/images_default.csv")[0]
    box = ",".join(record[k] for k in ("box_x", "box_y", "box_w", "box_h"))
    code = main(["image", str(media_dir / "sample1.jpg"), "--box", box, "--models", str(models_dir),
                 "--csv", str(tmp_path / "out.csv"), "--draw", str(tmp_path / "out.png"), "--single-start"])
    assert code == 0
    assert "sample1.jpg: ok" in capsys.readouterr().out
    with open(tmp_path / "out.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["file"].endswith("sample1.jpg") and (row["face_id"], row["faces_found"], row["success"]) == ("0", "1", "1")
    ours = np.array([[float(row[f"x_{i}"]), float(row[f"y_{i}"])] for i in range(68)])
    assert np.median(np.linalg.norm(ours - landmarks([record]).numpy()[0], axis=1)) < 0.05       # the C++'s fit
    assert {"pose_Tx", "pose_Rz", "X_67", "Z_0", "p_scale", "p_33"} <= set(row)
    drawing = cv2.imread(str(tmp_path / "out.png"))
    assert drawing.shape == cv2.imread(str(media_dir / "sample1.jpg")).shape


def test_image_command_detects_faces(models_dir, media_dir, reference_dir, tmp_path, capsys, monkeypatch):
    import csv

    import cv2
    import numpy as np

    from reference import landmarks, rows

    monkeypatch.setenv("TORCH_CLNF_CACHE", str(tmp_path / "cache"))
    cv2.imwrite(str(tmp_path / "blank.png"), np.full((120, 160, 3), 90, np.uint8))
    code = main(["image", str(media_dir / "sample2.jpg"), str(tmp_path / "blank.png"), "--models", str(models_dir),
                 "--csv", str(tmp_path / "out.csv")])
    assert code == 0
    out = capsys.readouterr().out
    assert "sample2.jpg: ok, confidence 0.983" in out and "blank.png: no face" in out
    with open(tmp_path / "out.csv") as f:
        row, blank = list(csv.DictReader(f))                  # the blank image: a row saying no face
    assert blank["file"].endswith("blank.png") and (blank["face_id"], blank["success"], blank["x_0"]) == ("", "0", "")
    record = rows(reference_dir / "openface_cpp/images_default.csv")[1]
    ours = np.array([[float(row[f"x_{i}"]), float(row[f"y_{i}"])] for i in range(68)])
    assert np.median(np.linalg.norm(ours - landmarks([record]).numpy()[0], axis=1)) < 0.5


def test_image_command_keeps_the_most_confident_faces(models_dir, media_dir, tmp_path, capsys, monkeypatch):
    """sample6, a grid of portraits: every face is fitted, the two most confident are written, and
    the CSV says how many the image had."""
    import csv

    monkeypatch.setenv("TORCH_CLNF_CACHE", str(tmp_path / "cache"))
    code = main(["image", str(media_dir / "sample6.jpg"), "--max-faces", "2", "--models", str(models_dir),
                 "--csv", str(tmp_path / "out.csv")])
    assert code == 0
    out = capsys.readouterr().out
    with open(tmp_path / "out.csv") as f:
        table = list(csv.DictReader(f))
    found = int(table[0]["faces_found"])
    assert len(table) == 2 and found > 2 and {r["faces_found"] for r in table} == {str(found)}
    assert f"sample6.jpg: {found} faces, 2 kept" in out and f"({found - 2} more left out by --max-faces" in out
    assert len({r["face_id"] for r in table}) == 2 and all(int(r["face_id"]) < found for r in table)
    assert main(["image", str(media_dir / "sample6.jpg"), "--max-faces", "0"]) == 2
    assert "--max-faces must be at least 1" in capsys.readouterr().err
    assert main(["image", str(media_dir / "sample6.jpg"), "--min-confidence", "1.5"]) == 2
    assert "--min-confidence must be between 0 and 1" in capsys.readouterr().err


def test_video_command_on_a_folder(models_dir, media_dir, tmp_path, capsys, monkeypatch):
    """Every video in the folder, shared between two worker processes; the unreadable one reported."""
    import csv
    import shutil

    monkeypatch.setenv("TORCH_CLNF_CACHE", str(tmp_path / "cache"))
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(media_dir / "changeLighting.wmv", videos / "a.wmv")
    (videos / "b.avi").write_bytes(b"not a video")
    code = main([str(videos), "--models", str(models_dir), "--out", str(tmp_path / "out"), "--quiet", "--workers", "2"])
    assert code == 1                                              # one video could not be read
    out = capsys.readouterr().out
    assert "a.wmv: 88 frames" in out and "b.avi: 0 frames" in out and "not a readable video" in out
    with open(tmp_path / "out/a.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 88 and sum(r["success"] == "1" for r in table) >= 84


def test_image_command_on_a_folder_with_an_unreadable_file(models_dir, media_dir, reference_dir, tmp_path, capsys,
                                                           monkeypatch):
    """Every image in the folder, two per batch; the broken one reported, the others fitted and written."""
    import csv
    import shutil

    from reference import rows

    monkeypatch.setenv("TORCH_CLNF_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "c.jpg", "d.jpg"):
        shutil.copy(media_dir / "sample1.jpg", folder / name)
    (folder / "b.jpg").write_bytes(b"not an image")
    record = rows(reference_dir / "openface_cpp/images_default.csv")[0]
    box = ",".join(record[k] for k in ("box_x", "box_y", "box_w", "box_h"))
    code = main(["image", str(folder), "--box", box, "--batch", "2", "--models", str(models_dir),
                 "--csv", str(tmp_path / "out.csv"), "--draw", str(tmp_path / "drawn")])
    assert code == 1                                              # one image could not be read
    captured = capsys.readouterr()
    assert "b.jpg: not a readable image file" in captured.err and "1 of 4 image(s) could not be read" in captured.err
    assert all(f"{name}: ok" in captured.out for name in ("a.jpg", "c.jpg", "d.jpg"))
    assert "3 face(s) fitted in 3 image(s)" in captured.out
    with open(tmp_path / "out.csv") as f:
        assert [row["file"][-5:] for row in csv.DictReader(f)] == ["a.jpg", "c.jpg", "d.jpg"]
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["a_landmarks.png", "c_landmarks.png",
                                                                      "d_landmarks.png"]


def test_image_command_checks_its_input(tmp_path, capsys):
    assert main(["image", str(tmp_path)]) == 2
    assert "no image files in" in capsys.readouterr().err
    assert main(["image", str(tmp_path / "absent.jpg")]) == 2
    assert "no such file or folder: " in capsys.readouterr().err
    (tmp_path / "a.jpg").write_bytes(b"")
    assert main(["image", str(tmp_path), "--batch", "0"]) == 2
    assert "--batch must be at least 1" in capsys.readouterr().err
    assert main(["image", str(tmp_path), "--box", "1,2,3,4", "--box", "1,2,3,4"]) == 2
    assert "2 boxes for 1 images" in capsys.readouterr().err
    for box in ("1,2,3", "nan,2,3,4", "1,2,inf,4", "1,2,0,4"):
        with pytest.raises(SystemExit):
            main(["image", str(tmp_path), "--box", box])
        assert f"expected four numbers x,y,width,height with width, height > 0, found '{box}'" in capsys.readouterr().err


def test_video_command_checks_its_input(media_dir, tmp_path, capsys):
    """The same rule as ``image``: nothing to process or a wrong number is a usage error (exit 2)."""
    assert main(["video", str(media_dir / "default.wmv"), "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
    assert main(["video", str(media_dir / "default.wmv"), "--threads", "0"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err
    assert main(["video", str(media_dir / "default.wmv"), "--segments", "0"]) == 2
    assert "--segments must be at least 1" in capsys.readouterr().err
    assert main(["video", str(media_dir / "default.wmv"), "--warmup", "-1"]) == 2
    assert "--warmup must be at least 0" in capsys.readouterr().err
    assert main(["video", str(tmp_path)]) == 2
    assert "no videos or images in" in capsys.readouterr().err
    assert main(["video", str(tmp_path / "absent.mp4")]) == 2
    assert "no such file or folder: " in capsys.readouterr().err


def short_video(path, media_dir, frames=5):
    """The first ``frames`` images of image_sequence as an MJPG video (a face in every frame)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    images = [cv2.imread(str(media_dir / f"image_sequence/{k + 1:03d}.jpg")) for k in range(frames)]
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (width, height))
    for image in images:
        writer.write(image)
    writer.release()
    return path


def test_videos_of_the_same_name_each_get_their_own_csv(models_dir, media_dir, tmp_path, capsys, monkeypatch):
    """subj1/session.avi and subj2/session.avi, clip.avi beside clip.wmv: before, each pair wrote one CSV,
    rows interleaved. Now the relative paths are mirrored under --out and a clash keeps the suffix."""
    import csv
    import shutil

    monkeypatch.setenv("TORCH_CLNF_CACHE", str(tmp_path / "cache"))
    videos = tmp_path / "videos"
    sources = [short_video(videos / "subj1/session.avi", media_dir, 4), short_video(videos / "subj2/session.avi", media_dir, 5),
               short_video(videos / "clips/clip.avi", media_dir, 6)]
    sources.append(videos / "clips/clip.wmv")
    shutil.copy(media_dir / "changeLighting.wmv", sources[-1])
    code = main(["video", *map(str, sources), "--models", str(models_dir), "--out", str(tmp_path / "out"), "--quiet",
                 "--workers", "2"])
    assert code == 0, capsys.readouterr()
    written = {p.relative_to(tmp_path / "out").as_posix(): p for p in (tmp_path / "out").rglob("*.csv")}
    assert sorted(written) == ["clips/clip_avi.csv", "clips/clip_wmv.csv", "subj1/session.csv", "subj2/session.csv"]
    for name, frames in (("subj1/session.csv", 4), ("subj2/session.csv", 5), ("clips/clip_avi.csv", 6),
                         ("clips/clip_wmv.csv", 88)):
        with open(written[name]) as f:
            table = list(csv.DictReader(f))
        assert [r["frame"] for r in table] == [str(k + 1) for k in range(frames)], name
        assert all(None not in r.values() and len(r) == len(table[0]) for r in table)


def test_outputs_that_would_overwrite_an_input_are_refused_before_any_work(media_dir, tmp_path, capsys):
    videos = [short_video(tmp_path / "x.avi", media_dir, 2), short_video(tmp_path / "x_landmarks.avi", media_dir, 2)]
    assert main(["video", *map(str, videos), "--draw"]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.avi", "x_landmarks.avi"]


def test_image_drawings_of_the_same_name_are_kept_apart(models_dir, media_dir, reference_dir, tmp_path, capsys,
                                                        monkeypatch):
    import shutil

    from reference import rows

    monkeypatch.setenv("TORCH_CLNF_CACHE", str(tmp_path / "cache"))
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(media_dir / "sample1.jpg", tmp_path / folder / "face.jpg")
    record = rows(reference_dir / "openface_cpp/images_default.csv")[0]
    box = ",".join(record[k] for k in ("box_x", "box_y", "box_w", "box_h"))
    assert main(["image", str(tmp_path / "a"), str(tmp_path / "b"), "--box", box, "--models", str(models_dir),
                 "--draw", str(tmp_path / "drawn")]) == 0
    assert sorted(p.relative_to(tmp_path / "drawn").as_posix() for p in (tmp_path / "drawn").rglob("*.png")) == [
        "a/face_landmarks.png", "b/face_landmarks.png"]


def test_a_device_that_is_not_there_is_one_line(media_dir, capsys):
    import torch

    for device in ["gpu"] + ([] if torch.cuda.is_available() else ["cuda"]):
        assert main(["image", str(media_dir / "sample1.jpg"), "--device", device]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "available here: cpu" in err, err


def test_a_negative_box_needs_no_equals_sign_and_a_box_outside_is_a_warning(models_dir, media_dir, tmp_path, capsys,
                                                                             monkeypatch):
    monkeypatch.setenv("TORCH_CLNF_CACHE", str(tmp_path / "cache"))
    assert main(["image", str(media_dir / "sample1.jpg"), "--box", "-50,-50,100,100", "--models", str(models_dir),
                 "--no-parts"]) == 0
    err = capsys.readouterr().err
    assert "torch-clnf: warning: less than half of 1 face box(es) lies inside its image: box 0 (-50, -50, 100, 100)" in err


def test_help_answers_without_loading_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom torch_clnf.cli import main\ntry:\n    main(['video', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint('torch' in sys.modules, 'cv2' in sys.modules)")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip().endswith("False False") and "--threads" in found.stdout


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_stops_cleanly_and_keeps_the_rows(models_dir, media_dir, tmp_path, workers):
    """Ctrl-C as a terminal sends it (to the whole process group): exit 130, no traceback, and every
    video's CSV, still a .csv.part, holds whole rows of the frames tracked so far."""
    import csv
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    sources = [tmp_path / f"v{k}.wmv" for k in range(workers)]
    for source in sources:
        shutil.copy(media_dir / "default.wmv", source)
    env = dict(os.environ, TORCH_CLNF_CACHE=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "torch_clnf.cli", "video", *map(str, sources), "--models", str(models_dir),
               "--out", str(tmp_path / "out"), "--quiet", "--workers", str(workers)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    csvs = [tmp_path / "out" / f"v{k}.csv.part" for k in range(workers)]
    deadline = time.monotonic() + 120
    while not all(p.is_file() and p.read_text().count("\n") > 3 for p in csvs):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, (out, err)
    assert "Traceback" not in err and "interrupted" in err
    for path in csvs:
        with open(path) as f:
            table = list(csv.DictReader(f))
        assert 3 <= len(table) < 288 and all(None not in r.values() and len(r) == len(table[0]) for r in table)
        name = path.name.removesuffix(".csv.part")
        assert f"{name}.wmv: {len(table)} frames" in out and f"interrupted after {len(table)} frames" in out
        assert not path.with_name(f"{name}.csv").exists()


def test_one_truncated_video_in_segments_is_one_csv_of_its_readable_frames(models_dir, media_dir, tmp_path, capsys,
                                                                          monkeypatch):
    """The first MB of default.wmv (130 of its 288 frames) cut into 3 segments with 8 warm-up frames:
    one CSV, every readable frame once and in order, the truncation reported once, exit 1."""
    import csv

    monkeypatch.setenv("TORCH_CLNF_CACHE", str(tmp_path / "cache"))
    cut = tmp_path / "cut.wmv"
    cut.write_bytes((media_dir / "default.wmv").read_bytes()[:1_000_000])
    code = main(["video", str(cut), "--segments", "3", "--warmup", "8", "--models", str(models_dir),
                 "--out", str(tmp_path / "out"), "--quiet", "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 1 and out.count("truncated or damaged file") == 1, out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cut.csv", "torch_clnf_runs.jsonl"]
    with open(tmp_path / "out/cut.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in table] == list(range(1, 131)) and all(r["success"] == "1" for r in table)


def test_compile_command_compiles_what_fits_and_tracking_run(models_dir, tmp_path, capsys, monkeypatch):
    """Each batch size's fits (single start, 11 head rotations, 12 with the detector's points) and
    tracking go through the compiled functions (here run eagerly: compiling them takes minutes,
    tests/fitting/test_compiled.py compiles some)."""
    from torch_clnf.models import compiling

    calls = set()

    def eager(function, template, tensors, modules, signature, dims, prepare=None):
        params = [t for t in tensors if t.dim() == 2 and t.shape[1] == 6]        # (B, 6) global params
        calls.add((function.__name__, (params or tensors)[0].shape[0]))
        return lambda inputs: tuple(function(*compiling._rebuild(template, inputs, modules)))

    monkeypatch.setattr(compiling, "_runner", eager)
    monkeypatch.setattr(compiling, "_directory", None)
    assert main(["compile", "--models", str(models_dir), "--cache", str(tmp_path), "--batch", "1", "2"]) == 0
    out = capsys.readouterr().out
    assert ("1 face(s): fit from boxes (single start, 11 head rotations, and 12 with the detector's points) "
            "and tracking compiled") in out
    assert "2 face(s)" in out and f"0 new packages in {tmp_path / 'compiled'}" in out
    assert {("fit_ccnf_scales", 1), ("fit_ccnf_scales", 2), ("fit_ccnf_scales", 11), ("fit_ccnf_scales", 22),
            ("fit_ccnf_scales", 12), ("fit_ccnf_scales", 24),                 # a video's first frame: the points too
            ("refit_parts_jointly", 1), ("refit_parts_jointly", 2), ("_calc_params", 1)} <= calls   # main fits, parts
    # each batch whole (11 and more hypotheses too), not in power-of-two parts
    assert {faces for name, faces in calls if name == "fit_ccnf_scales"} == {1, 2, 11, 22, 12, 24}


def test_model_options_reach_the_fit_settings():
    args = build_parser().parse_args(["image", "x.jpg", "--cen-bfloat16", "--no-parts", "--compile"])
    config = _loader(args).keywords["config"]
    assert config.cen_bfloat16 and config.compile and not config.refine_hierarchical
    assert not _loader(build_parser().parse_args(["video", "x.avi"])).keywords["config"].cen_bfloat16
