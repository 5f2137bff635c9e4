"""Videos as datasets: every frame round-trips (count, times, pixels within coding noise), random access equals
sequential decoding, subsampling, and clear errors for cut or foreign files."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("av", reason="the vehicle extra (PyAV) is not installed")

from tests.data.recording_helpers import smooth, write_video  # noqa: E402
from udaseg.data import build_dataset  # noqa: E402
from udaseg.data.recordings import RecordingError, Subsample  # noqa: E402
from udaseg.data.video import VideoSource  # noqa: E402

N, FPS = 12, 10


@pytest.fixture(scope="module", params=["mkv", "mp4"])
def video(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / f"drive.{request.param}"
    images = smooth(N)
    write_video(path, images, fps=FPS)
    return path, images


def test_every_frame_round_trips(video):
    path, images = video
    ds = build_dataset(f"video:{path}")
    assert len(ds) == N and not ds.labelled
    order = [5, 0, 11, 6, 7, 1, 9, 10, 2, 3, 4, 8]  # seeks backwards and forwards, and sequential runs
    got = {i: ds.frame(i) for i in order}
    for i, image in enumerate(images):
        assert got[i].index == i and got[i].stamp_ns == i * 1_000_000_000 // FPS
        assert np.abs(got[i].image.astype(int) - image).max() <= 3  # lossless 4:4:4 H.264, RGB<->YUV rounding
    streamed = list(VideoSource(path).stream(Subsample()))
    assert len(streamed) == N
    assert all(np.array_equal(f.image, got[f.index].image) for f in streamed)  # same decoder, same pixels
    item = ds[3]
    assert item["image"].shape == (3, *images[0].shape[:2]) and (item["label"] == 255).all()


def test_subsampling(video):
    path, _ = video
    assert [f.index for f in build_dataset(f"video:{path}:every=5").frames] == [0, 5, 10]
    assert [f.index for f in build_dataset(f"video:{path}:min_interval_s=0.35").frames] == [0, 4, 8]
    source = VideoSource(path)
    assert [f.index for f in source.stream(Subsample(every=4))] == [0, 4, 8]


def test_cut_video_keeps_the_frames_before_the_cut(tmp_path):
    path = tmp_path / "cut.mkv"
    images = smooth(N)
    write_video(path, images, fps=FPS)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])  # a dash-cam losing power
    with pytest.warns(UserWarning, match=r"cut.mkv: the video is truncated or damaged after \d+ frames"):
        ds = build_dataset(f"video:{path}")
    assert 0 < len(ds) < N
    for i in range(len(ds)):
        assert np.abs(ds.frame(i).image.astype(int) - images[i]).max() <= 3
    with pytest.raises(RecordingError, match="cut.mkv: the video is truncated"):
        list(VideoSource(path).stream(Subsample()))


def test_unreadable_files_are_clear_errors(tmp_path):
    mp4 = tmp_path / "cut.mp4"
    write_video(mp4, smooth(4), fps=FPS)
    data = mp4.read_bytes()
    mp4.write_bytes(data[: len(data) * 6 // 10])  # the index (moov) is at the end of an mp4: without it, nothing
    with pytest.raises(RecordingError, match=r"cut.mp4: not a readable video"):
        build_dataset(f"video:{mp4}")
    mp4.write_bytes(data[:-200])  # a damaged index
    with pytest.raises(RecordingError, match=r"cut.mp4 \(video\): no frames to use: it holds no readable frames"):
        build_dataset(f"video:{mp4}")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(RecordingError, match="notes.mp4: not a readable video"):
        build_dataset(f"video:{text}")
    with pytest.raises(RecordingError, match="no such video file"):
        build_dataset(f"video:{tmp_path / 'missing.mp4'}")
