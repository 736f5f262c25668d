"""Pipelines over images and videos: tracking many streams at once, frame decoding, CSV output.

The names below are imported on first use (the command line reads this package's light modules
without loading torch)."""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

_WHERE = {"Frame": ".frames", "FrameReader": ".frames", "video_sources": ".frames", "ImageFit": ".still_images",
          "fit_image_files": ".still_images", "image_files": ".still_images", "FaceTrack": ".tracker",
          "FrameFit": ".tracker", "Tracker": ".tracker", "TrackingConfig": ".tracker", "VideoSummary": ".videos",
          "track_videos": ".videos", "auto_workers": ".workers", "track_videos_in_processes": ".workers",
          "track_videos_on_ray": ".ray_runs"}
__all__ = sorted(_WHERE)

if TYPE_CHECKING:
    from .frames import Frame, FrameReader, video_sources
    from .still_images import ImageFit, fit_image_files, image_files
    from .tracker import FaceTrack, FrameFit, Tracker, TrackingConfig
    from .videos import VideoSummary, track_videos
    from .ray_runs import track_videos_on_ray
    from .workers import auto_workers, track_videos_in_processes


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
