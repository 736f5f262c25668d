"""Pipelines over images and videos: tracking many streams at once, frame decoding, CSV output."""
from .frames import Frame, FrameReader, video_sources
from .image_files import ImageFit, fit_image_files, image_files
from .tracker import FaceTrack, FrameFit, Tracker, TrackingConfig
from .videos import VideoSummary, track_videos
from .workers import auto_workers, track_videos_in_processes

__all__ = ["FaceTrack", "Frame", "FrameFit", "FrameReader", "ImageFit", "Tracker", "TrackingConfig", "VideoSummary",
           "auto_workers", "fit_image_files", "image_files", "track_videos", "track_videos_in_processes", "video_sources"]
