"""Pipelines over images and videos: tracking many streams at once, frame decoding, CSV output."""
from .frames import Frame, FrameReader, video_sources
from .tracker import FaceTrack, FrameFit, Tracker, TrackingConfig
from .videos import VideoSummary, track_videos
from .workers import auto_workers, track_videos_in_processes

__all__ = ["FaceTrack", "Frame", "FrameFit", "FrameReader", "Tracker", "TrackingConfig", "VideoSummary", "auto_workers",
           "track_videos", "track_videos_in_processes", "video_sources"]
