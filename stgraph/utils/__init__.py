"""Small shared helpers (atomic file writes, device selection, seeding)."""
from .io import atomic_path, atomic_save_npy, atomic_write_text
from .runtime import resolve_device, seed_everything

__all__ = ["atomic_path", "atomic_save_npy", "atomic_write_text", "resolve_device", "seed_everything"]
