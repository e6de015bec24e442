"""Small shared helpers (atomic file writes, device selection, seeding, prefetching)."""
from .cache import folder_size, resolve_cache_dir, user_cache_dir
from .io import (DestinationError, atomic_path, atomic_save_npy, atomic_write_text, check_output_file,
                 check_writable_dir)
from .runtime import DeviceError, prefetch, resolve_device, seed_everything

__all__ = ["folder_size", "resolve_cache_dir", "user_cache_dir", "atomic_path", "atomic_save_npy",
           "atomic_write_text", "check_output_file", "check_writable_dir", "DestinationError", "DeviceError",
           "resolve_device", "seed_everything", "prefetch"]
