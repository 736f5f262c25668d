"""Pipelines over images and videos: tracking many streams at once, frame decoding, CSV output.

The names below are imported on first use (the command line reads this package's light modules
without loading torch)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_attributes

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


__getattr__ = lazy_attributes(__name__, _WHERE)
