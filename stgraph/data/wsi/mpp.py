"""The pixel size of a whole-slide image (µm per level-0 pixel) from its metadata.

Sources: the Aperio ``ImageDescription`` (``MPP = 0.2520``), OME-XML ``PhysicalSizeX`` (with its unit), the
TIFF ``XResolution`` / ``ResolutionUnit`` tags (centimetre, inch, mm, µm). A value outside [0.01, 100] µm/px
(e.g. the 72 dpi that image editors write) is ignored as not a microscope calibration.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Optional

import numpy as np

__all__ = ["MPP_RANGE", "plausible_mpp", "mpp_from_aperio_description", "mpp_from_ome_xml",
           "mpp_from_tiff_resolution"]

#: Plausible microscope pixel sizes (µm/px). Outside this a resolution tag is not a calibration (72 dpi
#: = 352.8 µm/px is what image editors write by default).
MPP_RANGE = (0.01, 100.0)


def plausible_mpp(mpp: Optional[float]) -> Optional[float]:
    if mpp is None or not np.isfinite(mpp) or not (MPP_RANGE[0] <= mpp <= MPP_RANGE[1]):
        return None
    return float(mpp)


def mpp_from_aperio_description(description: str) -> Optional[float]:
    """µm per pixel from an Aperio SVS ``ImageDescription`` (``…|MPP = 0.2520|…``), else ``None``."""
    if not description or not description.lstrip().startswith("Aperio"):
        return None
    match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", description)
    if not match:
        return None
    try:
        return plausible_mpp(float(match.group(1)))
    except ValueError:
        return None


#: OME length units → µm.
_OME_UNITS = {"µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "micron": 1.0, "nm": 1e-3, "Å": 1e-4, "mm": 1e3, "cm": 1e4,
              "m": 1e6, "pm": 1e-6}


def mpp_from_ome_xml(xml: str) -> Optional[float]:
    """µm per pixel from OME-XML: the first ``Pixels`` element's ``PhysicalSizeX`` in ``PhysicalSizeXUnit``.

    The unit defaults to µm (the OME schema default); an unknown unit or a missing size gives ``None``.
    """
    if not xml or "PhysicalSizeX" not in xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for elem in root.iter():
        if elem.tag.rsplit("}", 1)[-1] == "Pixels" and "PhysicalSizeX" in elem.attrib:
            unit = elem.attrib.get("PhysicalSizeXUnit", "µm")
            if unit not in _OME_UNITS:
                return None
            try:
                return plausible_mpp(float(elem.attrib["PhysicalSizeX"]) * _OME_UNITS[unit])
            except ValueError:
                return None
    return None


#: TIFF ResolutionUnit → µm per unit (1 = none: no absolute unit; 4, 5 are tifffile's mm/µm extensions).
_RESUNIT_UM = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}


def mpp_from_tiff_resolution(x_resolution, resolution_unit) -> Optional[float]:
    """µm per pixel from the TIFF ``XResolution`` (pixels per unit; a number or a (num, den) rational) and
    ``ResolutionUnit`` (2 = inch, 3 = centimetre): mpp = µm per unit / pixels per unit.

    ``None`` when the unit is 1 (none), the resolution is zero, or the result is implausible (see module doc).
    """
    if x_resolution is None or resolution_unit is None:
        return None
    if isinstance(x_resolution, (tuple, list)):
        num, den = x_resolution
        if not den:
            return None
        x_resolution = num / den
    unit = _RESUNIT_UM.get(int(resolution_unit))
    if unit is None or not x_resolution:
        return None
    return plausible_mpp(unit / float(x_resolution))
