"""Recordings end to end from the CLI: a bag and a video as inference input/output (every frame's outputs checked
against `segment` on the frame, stamps and frame ids copied), cut and damaged inputs, and as training targets."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("rosbags", reason="the vehicle extra (rosbags) is not installed")
pytest.importorskip("av", reason="the vehicle extra (PyAV) is not installed")

from tests.data.recording_helpers import frames, smooth, storage_file, write_bag, write_video  # noqa: E402
from udaseg.data.labels import PALETTE  # noqa: E402
from udaseg.infer import load_backend, main, segment  # noqa: E402

N = 4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A random compact model (width 8) as .pt and as a static 32x64 .onnx with labels and logits."""
    from udaseg.checkpoint import save_checkpoint
    from udaseg.export.to_onnx import ExportConfig, export_onnx
    from udaseg.models import build_model

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    spec = {"name": "compact", "num_classes": 19, "kwargs": {"width": 8}}
    pt = save_checkpoint(folder / "m.pt", {"model": build_model("compact", width=8).state_dict(), "model_spec": spec})
    onnx = export_onnx(pt, folder / "m.onnx", ExportConfig(height=32, width=64, output_mode="both"))
    return {"pt": Path(pt), "onnx": Path(onnx)}


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    """An MCAP bag with a raw and a png camera, N frames each."""
    path = tmp_path_factory.mktemp("drive") / "drive"
    topics = {
        "/cam/front/image_raw": ("bgr8", frames(N, h=24, w=40)),
        "/cam/rear/image_raw/compressed": ("png", frames(N, seed=3, h=24, w=40)),
    }
    write_bag(path, topics)
    return storage_file(path), topics  # a bare .mcap file, as a recorder's --output drive.mcap gives


def read_bag(path: Path) -> dict[str, list]:
    """{topic: [(log time, deserialised message), ...]} of a bag written by infer."""
    from rosbags.rosbag2 import Reader

    from udaseg.data.rosbag import typestore

    store, out = typestore(), {}
    with Reader(path) as reader:
        for conn, t, data in reader.messages():
            out.setdefault(conn.topic, []).append((t, store.deserialize_cdr(data, conn.msgtype)))
    return out


def pixels(msg) -> np.ndarray:
    data = np.asarray(msg.data, np.uint8)
    if msg.encoding == "32FC1":
        return data.view(np.float32).reshape(msg.height, msg.width)
    return (
        data.reshape(msg.height, msg.width, -1).squeeze(-1)
        if msg.encoding == "mono8"
        else data.reshape(msg.height, msg.width, 3)
    )


@pytest.mark.parametrize(
    "model,out_name,flags", [("onnx", "seg.mcap", ["--confidence"]), ("pt", "seg.db3", ["--float-confidence"])]
)
def test_bag_in_bag_out(models, drive, tmp_path, model, out_name, flags, capsys):
    from udaseg.data.recordings import Subsample
    from udaseg.data.rosbag import BagSource

    bag, topics = drive
    topic = "/cam/front/image_raw"
    out = tmp_path / out_name
    args = ["--checkpoint", str(models[model]), "--input", str(bag), "--topic", topic, "--output", str(out)]
    assert main(args + flags + ["--height", "32", "--width", "64"]) == 0
    assert f"{N} written, 0 skipped" in capsys.readouterr().out
    written = read_bag(out)
    base = f"{topic}/segmentation"
    assert sorted(written) == [f"{base}/color", f"{base}/confidence", f"{base}/labels"]
    backend = load_backend(models[model])
    source_frames = list(BagSource(bag, topic).stream(Subsample()))
    for name in ("labels", "color", "confidence"):
        assert [t for t, _ in written[f"{base}/{name}"]] == [f.log_time_ns for f in source_frames]
    for f, (_, lab), (_, col), (_, conf) in zip(
        source_frames, *(written[f"{base}/{n}"] for n in ("labels", "color", "confidence"))
    ):
        want = segment(backend, f.image, (32, 64), with_confidence=True)
        for msg in (lab, col, conf):
            assert msg.header.frame_id == f.frame_id
            assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == f.stamp_ns
        assert lab.encoding == "mono8" and np.array_equal(pixels(lab), want["labels"])
        assert col.encoding == "rgb8" and np.array_equal(pixels(col), np.asarray(PALETTE, np.uint8)[want["labels"]])
        if "--float-confidence" in flags:
            assert conf.encoding == "32FC1" and np.array_equal(pixels(conf), want["confidence_f32"])
        else:
            assert conf.encoding == "mono8" and np.array_equal(pixels(conf), want["confidence"])


def test_bag_in_png_folder_out(models, drive, tmp_path):
    bag, _ = drive
    out = tmp_path / "pngs"
    args = [
        "--checkpoint",
        str(models["onnx"]),
        "--input",
        str(bag),
        "--topic",
        "/cam/rear/image_raw/compressed",
        "--output",
        str(out),
        "--every",
        "2",
    ]
    assert main(args) == 0
    rows = list(csv.DictReader((out / "frames.csv").open()))
    assert [r["name"] for r in rows] == ["frame000000", "frame000002"] and rows[1]["frame_id"] == "cam1_2"
    assert int(rows[1]["stamp_ns"]) == 1_700_000_000_000_000_000 + 2 * 100_000_000 + 7
    assert sorted(p.name for p in out.glob("*.png")) == [
        "frame000000_color.png",
        "frame000000_labels.png",
        "frame000002_color.png",
        "frame000002_labels.png",
    ]


def test_wrong_topic_is_one_line_listing_the_image_topics(models, drive, tmp_path, capsys):
    bag, _ = drive
    code = main(
        [
            "--checkpoint",
            str(models["onnx"]),
            "--input",
            str(bag),
            "--topic",
            "/cam/left",
            "--output",
            str(tmp_path / "x.mcap"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(bag) in err
    assert (
        "no topic '/cam/left'; image topics in this bag: /cam/front/image_raw (Image), "
        "/cam/rear/image_raw/compressed (CompressedImage)" in err
    )
    assert not (tmp_path / "x.mcap").exists()


def test_unwritable_output_is_one_line(models, drive, tmp_path, capsys):
    bag, _ = drive
    (tmp_path / "file").write_text("a file, not a folder")
    for out in ("seg.mcap", "seg.db3", "pngs", "seg.mp4"):
        code = main(
            [
                "--checkpoint",
                str(models["onnx"]),
                "--input",
                str(bag),
                "--topic",
                "/cam/front/image_raw",
                "--output",
                str(tmp_path / "file" / out),
            ]
        )
        err = capsys.readouterr().err
        if out.endswith(".mp4"):  # a bag in cannot give a video out
            assert code == 2 and "a video output needs a video input" in err
            continue
        last = err.replace("\r", "\n").strip().splitlines()[-1]  # after the progress bar, if it started
        assert code == 2 and last.startswith(f"error: cannot write {tmp_path / 'file'}") and "Traceback" not in err
        assert last.endswith("a part of the path is a file, not a folder")


def test_cut_and_damaged_bags_keep_what_came_before(models, tmp_path, capsys):
    from udaseg.data.rosbag import typestore  # noqa: F401  (rosbags present)

    big = tmp_path / "big"
    write_bag(big, {"/cam": ("rgb8", frames(5, h=592, w=592))})  # > 1 MiB a frame: one MCAP chunk each
    data = storage_file(big).read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: len(data) * 6 // 10])
    out = tmp_path / "seg.mcap"
    assert main(["--checkpoint", str(models["onnx"]), "--input", str(cut), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    kept = len(read_bag(out)["/cam/segmentation/labels"])
    assert 0 < kept < 5 and f"{kept} written, 0 skipped" in err and "stopped early: " in err
    assert "cut.mcap topic /cam: the bag is truncated or damaged" in err

    damaged = tmp_path / "damaged"
    write_bag(damaged, {"/cam": ("jpeg", [*smooth(2), None, *smooth(2)])}, storage="db3")  # frame 2 is garbage
    pngs = tmp_path / "pngs"
    assert main(["--checkpoint", str(models["onnx"]), "--input", str(damaged), "--output", str(pngs)]) == 1
    err = capsys.readouterr().err
    assert "4 written, 1 skipped" in err and "skipped frame 2: " in err and "topic /cam frame 2: cannot decode" in err
    assert len(list(pngs.glob("*_labels.png"))) == 4


def test_video_in_overlay_video_and_pngs_out(models, tmp_path, capsys):
    import av

    images = smooth(6, h=30, w=50)  # odd-sized output video frames are padded: 30x50 stays, 4:2:0 needs even
    video = tmp_path / "dash.mkv"
    write_video(video, images, fps=10)
    out = tmp_path / "out"
    assert main(["--checkpoint", str(models["onnx"]), "--input", str(video), "--output", str(out), "--every", "2"]) == 0
    assert "3 written, 0 skipped" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*_labels.png")) == [f"frame{i:06d}_labels.png" for i in (0, 2, 4)]
    with av.open(str(out / "dash_overlay.mp4")) as container:
        decoded = list(container.decode(video=0))
        assert len(decoded) == 3 and decoded[0].width == 50 and decoded[0].height == 30
        tb = container.streams.video[0].time_base
        assert [round(float(f.pts * tb), 3) for f in decoded] == [0.0, 0.2, 0.4]  # the input's timeline
    labels = np.asarray(Image.open(out / "frame000002_labels.png"))
    color = PALETTE_U8[labels]
    blend = (images[2].astype(np.float32) * 0.5 + color * 0.5 + 0.5).astype(np.uint8)
    assert np.abs(decoded[1].to_ndarray(format="rgb24").astype(int) - blend).mean() < 6  # H.264 4:2:0
    only = tmp_path / "only.mp4"
    assert (
        main(
            [
                "--checkpoint",
                str(models["pt"]),
                "--input",
                str(video),
                "--output",
                str(only),
                "--height",
                "32",
                "--width",
                "64",
            ]
        )
        == 0
    )
    with av.open(str(only)) as container:
        assert container.streams.video[0].frames in (0, 6) and len(list(container.decode(video=0))) == 6


PALETTE_U8 = np.asarray(PALETTE, np.uint8)

TINY_TRAIN = [
    "--iters",
    "2",
    "--warmup-iters",
    "0",
    "--set",
    "data.crop=[32, 64]",
    "--set",
    "data.batch_size=2",
    "--set",
    "data.workers=0",
    "--set",
    "data.synthetic={count: 12, size: [48, 96]}",
    "--set",
    "train.threads=1",
    "--set",
    "model.kwargs={width: 8}",
    "--set",
    "train.samples=1",
    "--set",
    "optim.warmup_iters=1",
    "--set",
    "train.log_every=1",
]


def test_bag_and_video_as_training_targets(tmp_path, capsys):
    from udaseg.train import main as train_main

    bag = tmp_path / "bag"
    write_bag(bag, {"/cam": ("rgb8", frames(6, h=48, w=96))})
    assert train_main(["--target", f"rosbag:{bag}:/cam", "--out", str(tmp_path / "a"), *TINY_TRAIN]) == 2
    assert "has no labels: " in capsys.readouterr().err  # evaluating on the bag: refused before any training
    assert (
        train_main(["--target", f"rosbag:{bag}:/cam:every=2", "--no-eval", "--out", str(tmp_path / "b"), *TINY_TRAIN])
        == 0
    )
    assert (tmp_path / "b" / "final.pt").is_file()
    video = tmp_path / "dash.mkv"
    write_video(video, smooth(6, h=48, w=96))
    assert train_main(["--target", f"video:{video}", "--no-eval", "--out", str(tmp_path / "c"), *TINY_TRAIN]) == 0
    assert (tmp_path / "c" / "final.pt").is_file()


def test_a_bag_of_the_target_images_trains_exactly_like_the_images(tmp_path):
    """Drop-in: the synthetic target's training images as an rgb8 bag give the same run, weight for weight."""
    from tests.helpers import assert_states_equal, tiny_config
    from udaseg.data import build_dataset
    from udaseg.train import train

    target = build_dataset("synthetic", split="train", role="target", count=12, size=[48, 96])
    bag = tmp_path / "target"
    write_bag(bag, {"/cam": ("rgb8", [target.load(i)[0] for i in range(len(target))])})
    states = []
    for name, overrides in (("images", {}), ("bag", {"data.target": f"rosbag:{bag}:/cam", "data.val": "synthetic"})):
        held: dict = {}
        result = train(tiny_config("self_training", **overrides), tmp_path / name, state_out=held)
        states.append((result["miou"], held))
    assert states[0][0] == states[1][0]
    assert_states_equal(states[0][1], states[1][1])
