"""Test set-up: 8 fake CPU devices (sharding tests), quiet TensorFlow, TF off any GPU."""
import os

# Must happen before JAX first touches a device.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
