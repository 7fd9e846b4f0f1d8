from .encoders import AudioEncoder, IMUEncoder, TextEncoder, VideoEncoder
from .fusion import QuadModalNet

__all__ = ["AudioEncoder", "IMUEncoder", "QuadModalNet", "TextEncoder", "VideoEncoder"]
