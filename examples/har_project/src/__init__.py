"""HAR-4M: quadmodal (video, audio, IMU, text) human activity recognition with SupCon."""
