"""Pipelines over images and videos: tracking many streams at once, frame decoding, CSV output."""
from .frames import Frame, FrameReader, video_sources
from .tracker import FaceTrack, FrameFit, Tracker, TrackingConfig
from .videos import VideoSummary, track_videos

__all__ = ["FaceTrack", "Frame", "FrameFit", "FrameReader", "Tracker", "TrackingConfig", "VideoSummary", "track_videos",
           "video_sources"]
