"""Small shared helpers (atomic file writes, device selection, seeding)."""
from .cache import folder_size, resolve_cache_dir, user_cache_dir
from .io import atomic_path, atomic_save_npy, atomic_write_text
from .runtime import resolve_device, seed_everything

__all__ = ["folder_size", "resolve_cache_dir", "user_cache_dir", "atomic_path", "atomic_save_npy", "atomic_write_text", "resolve_device", "seed_everything"]
