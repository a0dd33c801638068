"""trajvid: which video backbone best understands 3D trajectories seen by four cameras?"""

__version__ = "0.1.0"
