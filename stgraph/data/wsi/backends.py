"""The two whole-slide readers behind :class:`~stgraph.data.wsi.WSIImage`: tifffile (through its zarr store,
tile by tile) and openslide (optional), each giving level sizes, regions of a level and the file's pixel size."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import SlideFormatError
from ..image import to_rgb
from .mpp import mpp_from_aperio_description, mpp_from_ome_xml, mpp_from_tiff_resolution, plausible_mpp

__all__ = ["WSI_SUFFIXES", "OPENSLIDE_FIRST", "OPENSLIDE_ONLY", "OPENSLIDE_HINT", "openslide_available",
           "TiffBackend", "OpenSlideBackend"]

WSI_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".tif", ".tiff", ".scn", ".vms", ".vmu", ".bif", ".svslide")
#: Formats openslide reads natively; preferred over tifffile for them when openslide is importable
#: (their tiles are JPEG, which tifffile decodes only with imagecodecs).
OPENSLIDE_FIRST = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
#: Formats that are not TIFF at all: only openslide reads them.
OPENSLIDE_ONLY = (".mrxs", ".vms", ".vmu")
OPENSLIDE_HINT = "pip install 'stgraph[openslide]', i.e. openslide-python + openslide-bin"


def openslide_available() -> bool:
    """True when ``import openslide`` works (openslide-python with its C library)."""
    try:
        import openslide  # noqa: F401
    except Exception:  # ImportError, or OSError when the C library is missing
        return False
    return True



class TiffBackend:
    """Levels of ``series[0]`` of a TIFF, each read through tifffile's zarr store (tile by tile)."""

    name = "tifffile"

    def __init__(self, path: Path):
        import tifffile
        import zarr

        try:
            self.tif = tifffile.TiffFile(path)
            series = self.tif.series[0]
            self.levels = []
            for i, level in enumerate(series.levels):
                axes = level.axes
                if "Y" not in axes or "X" not in axes:
                    raise SlideFormatError(f"TIFF image {path} has axes {axes!r}; expected Y and X")
                # series.aszarr(level=i) is one level's array (the series' own store is a multiscale group).
                self.levels.append((zarr.open(series.aszarr(level=i), mode="r"), axes))
        except SlideFormatError:
            raise
        except Exception as err:  # tifffile/zarr raise many types for junk input
            raise SlideFormatError(f"cannot read whole-slide TIFF {path}: {err}") from err
        self.path = path
        self.dimensions = []
        for array, axes in self.levels:
            self.dimensions.append((int(array.shape[axes.index("X")]), int(array.shape[axes.index("Y")])))

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Level pixels [y, y+h) × [x, x+w), all inside the level, as (h, w, 3) uint8."""
        array, axes = self.levels[level]
        index, kept = [], []
        for ax in axes:
            if ax == "Y":
                index.append(slice(y, y + h))
                kept.append(ax)
            elif ax == "X":
                index.append(slice(x, x + w))
                kept.append(ax)
            elif ax in "SC":
                index.append(slice(None))
                kept.append(ax)
            else:  # Z, T, …: the first plane (brightfield slides have one)
                index.append(0)
        try:
            region = np.asarray(array[tuple(index)])
        except Exception as err:
            hint = (" (its tiles need the imagecodecs package: pip install imagecodecs, or open it with "
                    f"openslide: {OPENSLIDE_HINT})") if "imagecodecs" in str(err) else ""
            raise SlideFormatError(f"cannot decode level {level} of {self.path}: {err}{hint}") from err
        order = [kept.index("Y"), kept.index("X")] + [i for i, ax in enumerate(kept) if ax not in "YX"]
        return to_rgb(np.transpose(region, order))

    def mpp(self) -> tuple[Optional[float], str]:
        page = self.tif.pages[0]
        found = mpp_from_aperio_description(page.description)
        if found:
            return found, "Aperio ImageDescription MPP"
        if self.tif.is_ome:
            found = mpp_from_ome_xml(self.tif.ome_metadata or "")
            if found:
                return found, "OME-XML PhysicalSizeX"
        tags = page.tags
        xres, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
        found = mpp_from_tiff_resolution(xres.value if xres else None, unit.value if unit else None)
        if found:
            yres = tags.get("YResolution")
            found_y = mpp_from_tiff_resolution(yres.value if yres else None, unit.value)
            if found_y and abs(found_y - found) > 0.01 * found:
                warnings.warn(f"{self.path}: X and Y pixel sizes differ ({found:g} vs {found_y:g} µm); using X",
                              UserWarning, stacklevel=4)
            return found, "TIFF XResolution/ResolutionUnit"
        return None, ""

    def close(self) -> None:
        self.tif.close()


#: Image files read whole with Pillow (one level): an H&E photographed or exported as JPEG/PNG, predicted
#: as a whole slide given its pixel size (``--mpp``).
PILLOW_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp")


class PillowBackend:
    """A JPEG/PNG/any Pillow-readable image as a one-level slide, decoded once (a damaged JPEG is refused by
    name, as the spot readers refuse it). Such files rarely state a pixel size: give it (``--mpp``)."""

    name = "pillow"

    def __init__(self, path: Path):
        from ..image import load_image_file

        self.image = load_image_file(path)  # PILImage: RGB, decoded once, crops from PIL's own buffer
        self.path = path
        width, height = self.image.pil.size
        self.dimensions = [(int(width), int(height))]

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return np.asarray(self.image.pil.crop((x, y, x + w, y + h)), dtype=np.uint8)

    def mpp(self) -> tuple[Optional[float], str]:
        return None, ""  # a JPEG's dpi is the camera's or the exporter's, not the slide's: never trusted

    def close(self) -> None:
        self.image.pil.close()


class OpenSlideBackend:
    name = "openslide"

    def __init__(self, path: Path):
        import openslide

        try:
            self.slide = openslide.OpenSlide(str(path))
        except Exception as err:  # OpenSlideUnsupportedFormatError, OpenSlideError
            raise SlideFormatError(f"openslide cannot open whole-slide image {path}: {err}") from err
        self.path = path
        self.dimensions = [tuple(int(v) for v in d) for d in self.slide.level_dimensions]
        self.downsamples = [float(d) for d in self.slide.level_downsamples]

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.downsamples[level]
        try:
            rgba = np.asarray(self.slide.read_region((int(round(x * ds)), int(round(y * ds))), level, (w, h)))
        except Exception as err:
            raise SlideFormatError(f"openslide cannot read level {level} of {self.path}: {err}") from err
        # openslide returns premultiplied-alpha RGBA, transparent (0) where the scanner wrote nothing:
        # composite on white, the colour of empty glass.
        alpha = rgba[..., 3:4].astype(np.uint16)
        return (rgba[..., :3].astype(np.uint16) + (255 - alpha)).clip(0, 255).astype(np.uint8)

    def mpp(self) -> tuple[Optional[float], str]:
        props = self.slide.properties
        for key in ("openslide.mpp-x", "aperio.MPP"):
            if key in props:
                found = plausible_mpp(_float_or_none(props[key]))
                if found:
                    return found, f"openslide property {key}"
        found = mpp_from_tiff_resolution(_float_or_none(props.get("tiff.XResolution")),
                                         {"inch": 2, "centimeter": 3}.get(props.get("tiff.ResolutionUnit", "")))
        return (found, "TIFF XResolution/ResolutionUnit (openslide)") if found else (None, "")

    def close(self) -> None:
        self.slide.close()


def _float_or_none(value) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
