"""ROS 2 bags as datasets: every message round-trips (count, stamps, frame ids, pixels), both storage formats, raw
and compressed images, Bayer demosaicing, subsampling, worker processes, and clear errors for bad bags."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("rosbags", reason="the vehicle extra (rosbags) is not installed")

from tests.data.recording_helpers import PATTERNS, expected, frames, mosaic, smooth, storage_file, write_bag  # noqa: E402
from udaseg.data import build_dataset  # noqa: E402
from udaseg.data.recordings import RecordingError, Subsample  # noqa: E402
from udaseg.data.rosbag import BadFrame, BagSource, demosaic  # noqa: E402

RAW = ("rgb8", "bgr8", "mono8", "png")


@pytest.fixture(scope="module", params=["mcap", "db3"])
def bag(request, tmp_path_factory):
    """A bag of each storage format: four raw/lossless topics, a jpeg topic and a string topic."""
    path = tmp_path_factory.mktemp(request.param) / "drive"
    topics = {f"/cam/{enc}": (enc, frames(5, seed=i)) for i, enc in enumerate(RAW)}
    topics["/cam/jpeg"] = ("jpeg", smooth(3))
    truth = write_bag(path, topics, storage=request.param)
    return path, topics, truth


@pytest.mark.parametrize("as_file", [False, True], ids=["bag folder", "storage file"])
def test_every_message_round_trips(bag, as_file):
    path, topics, truth = bag
    path = storage_file(path) if as_file else path
    for topic, (encoding, images) in topics.items():
        ds = build_dataset(f"rosbag:{path}:{topic}")
        assert len(ds) == len(images) and not ds.labelled
        for i in reversed(range(len(ds))):  # random access, backwards
            frame = ds.frame(i)
            assert (frame.stamp_ns, frame.log_time_ns, frame.frame_id) == truth[topic][i]
            want = expected(images[i], encoding)
            if encoding == "jpeg":
                assert np.abs(frame.image.astype(int) - want).mean() < 3
            else:
                assert np.array_equal(frame.image, want), (topic, i)
        item = ds[1]
        assert item["image"].shape == (3, *images[0].shape[:2]) and (item["label"] == 255).all()
        assert item["name"] == "frame000001"


def test_stream_matches_random_access(bag):
    path, topics, truth = bag
    source = BagSource(path, "/cam/bgr8")
    streamed = list(source.stream(Subsample()))
    assert [(f.stamp_ns, f.log_time_ns, f.frame_id) for f in streamed] == truth["/cam/bgr8"]
    assert all(np.array_equal(f.image, im) for f, im in zip(streamed, topics["/cam/bgr8"][1]))
    assert source.count() == 5


def test_subsampling_by_spec_and_by_option(bag):
    path, _, truth = bag
    assert [f.index for f in build_dataset(f"rosbag:{path}:/cam/rgb8:every=2").frames] == [0, 2, 4]
    # frames are 0.1 s apart: at least 0.25 s keeps 0, 3; with every=2 first: 0, 4
    assert [f.index for f in build_dataset(f"rosbag:{path}:/cam/rgb8:min_interval_s=0.25").frames] == [0, 3]
    both = build_dataset(f"rosbag:{path}:/cam/rgb8", min_interval_s=0.25, every=2)
    assert [f.index for f in both.frames] == [0, 4]
    assert [f.index for f in build_dataset(f"rosbag:{path}:/cam/rgb8:every=3", every=2).frames] == [0, 3]  # spec wins
    with pytest.raises(RecordingError, match="unknown option 'evry'"):
        build_dataset(f"rosbag:{path}:/cam/rgb8:evry=2")
    with pytest.raises(RecordingError, match="every >= 1"):
        build_dataset(f"rosbag:{path}:/cam/rgb8:every=0")


def test_dataloader_workers_reopen_the_bag(bag):
    import torch

    path, topics, _ = bag
    ds = build_dataset(f"rosbag:{path}:/cam/rgb8")
    ds[0]  # opened in this process first: a forked worker must not reuse the handle
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, multiprocessing_context="fork")
    batch = next(iter(loader))
    want = torch.from_numpy(np.stack(topics["/cam/rgb8"][1])).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(batch["image"], want)


@pytest.mark.parametrize("encoding", sorted(PATTERNS))
def test_bayer_demosaic(encoding, tmp_path):
    # a linear ramp: bilinear demosaicing is exact inside the image; a sampled pixel always keeps its value
    y, x = np.mgrid[0:10, 0:14]
    ramp = np.stack([2 * x + 3 * y + 10, 4 * x + y + 20, x + 5 * y + 30], -1).astype(np.uint8)  # (10, 14, 3)
    out = demosaic(mosaic(ramp, PATTERNS[encoding]), PATTERNS[encoding])
    assert np.array_equal(out[1:-1, 1:-1], ramp[1:-1, 1:-1])
    assert np.array_equal(mosaic(out, PATTERNS[encoding]), mosaic(ramp, PATTERNS[encoding]))
    flat = np.full((6, 8, 3), (200, 100, 50), np.uint8)  # one colour: exact everywhere, borders included
    path = tmp_path / "bayer"
    write_bag(path, {"/cam": (encoding, [flat, ramp[:6, :8]])}, storage="mcap")
    assert np.array_equal(build_dataset(f"rosbag:{path}").frame(0).image, flat)  # the only image topic


def test_wrong_topic_lists_the_image_topics(bag):
    path, _, _ = bag
    with pytest.raises(
        RecordingError,
        match=r"no topic '/cam/front'; image topics in this bag: /cam/bgr8 \(Image\)"
        r".*/cam/jpeg \(CompressedImage\)",
    ) as e:
        build_dataset(f"rosbag:{path}:/cam/front")
    assert str(path) in str(e.value)
    with pytest.raises(RecordingError, match="/diagnostics holds std_msgs/msg/String, not sensor_msgs/Image"):
        build_dataset(f"rosbag:{path}:/diagnostics")
    with pytest.raises(RecordingError, match="name the camera topic"):
        build_dataset(f"rosbag:{path}")
    with pytest.raises(RecordingError, match="no such bag"):
        build_dataset(f"rosbag:{path}.nope:/cam/rgb8")


def test_unsupported_encoding_names_file_topic_and_frame(tmp_path):
    path = tmp_path / "depth"
    write_bag(path, {"/depth": ("16UC1", frames(2))}, storage="db3")
    ds = build_dataset(f"rosbag:{path}:/depth")
    with pytest.raises(
        RecordingError,
        match=r"depth topic /depth frame 1: unsupported encoding '16UC1'; supported: "
        r"rgb8, bgr8",
    ):
        ds[1]
    bad = list(BagSource(path, "/depth").stream(Subsample()))
    assert all(isinstance(f, BadFrame) and "16UC1" in f.reason for f in bad) and len(bad) == 2


@pytest.mark.parametrize("zstd", [False, True], ids=["plain chunks", "zstd chunks"])
def test_truncated_mcap_keeps_the_frames_before_the_cut(tmp_path, zstd):
    path = tmp_path / "cut"
    images = frames(6, h=592, w=592)  # > 1 MiB a frame: rosbags closes an MCAP chunk after each
    truth = write_bag(path, {"/cam": ("rgb8", images)}, storage="mcap", zstd=zstd)
    data = storage_file(path).read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: len(data) // 2])  # a recorder killed mid-write: no summary, no footer
    with pytest.warns(UserWarning, match=r"cut.mcap topic /cam: the bag is truncated or damaged after \d+ messages"):
        ds = build_dataset(f"rosbag:{cut}:/cam")
    assert 0 < len(ds) < 6
    for i in range(len(ds)):
        assert np.array_equal(ds.frame(i).image, images[i]) and ds.frame(i).stamp_ns == truth["/cam"][i][0]
    with pytest.raises(RecordingError, match="truncated or damaged"):
        list(BagSource(cut, "/cam").stream(Subsample()))


def test_damaged_db3_is_a_clear_error(tmp_path):
    path = tmp_path / "bad"
    write_bag(path, {"/cam": ("rgb8", frames(40, h=64, w=64))}, storage="db3")
    db = storage_file(path)
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = build_dataset(f"rosbag:{db}:/cam")
        except RecordingError as e:  # sqlite may refuse the cut file as a whole: then the message names it
            assert str(db) in str(e) and "topic /cam" in str(e) and "malformed" in str(e)
            return
    assert len(ds) < 40  # else the frames before the damage are used
