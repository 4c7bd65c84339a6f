"""Hardware targets as data: roofline and calibrated devices, Gemmini-style accelerators."""

from tstack.hardware.accel import AccelSpec, accel_presets, load_accel
from tstack.hardware.device import DeviceSpec, device_presets, device_to_dict, load_device

__all__ = ["AccelSpec", "DeviceSpec", "accel_presets", "device_presets", "device_to_dict", "load_accel", "load_device"]
