import os
import tempfile

# Multi-device tests need fake CPU devices; the flag must be set before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# Many tests (and the training subprocesses they start) compile the same tiny steps: JAX's
# persistent compilation cache, shared by the xdist workers, compiles each once. Set
# JAX_COMPILATION_CACHE_DIR to move it, or to "" to compile everything afresh.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "attention_jax-test-jit-cache"))
# Steps, not the many tiny eager-op compilations. No size limit: JAX's LRU eviction lists the
# whole directory on every write, which costs more than it saves here.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
