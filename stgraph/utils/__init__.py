"""Small shared helpers (atomic file writes, device selection, seeding, prefetching)."""
from .cache import folder_size, resolve_cache_dir, user_cache_dir
from .io import (DestinationError, atomic_path, atomic_save_npy, atomic_write_text, check_output_file,
                 check_writable_dir)

# The torch-backed helpers load on first use, so that `stgraph.utils.threads.configure_threads` can run before
# torch is imported (libgomp reads its wait policy once, when torch loads it).
_RUNTIME = ("DeviceError", "prefetch", "resolve_device", "seed_everything")


def __getattr__(name: str):
    if name in _RUNTIME:
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["folder_size", "resolve_cache_dir", "user_cache_dir", "atomic_path", "atomic_save_npy",
           "atomic_write_text", "check_output_file", "check_writable_dir", "DestinationError", "DeviceError",
           "resolve_device", "seed_everything", "prefetch"]
