import os

# Multi-device tests need fake CPU devices; the flag must be set before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")


def pytest_collection_modifyitems(items):
  """Modules with slow tests first (each module's tests stay together, so module fixtures are
  built once): with `pytest -n auto` the long tests then start early and the short ones fill
  the gaps, instead of one worker finishing a long test alone at the end."""
  slow = {item.module for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: getattr(item, "module", None) not in slow)
