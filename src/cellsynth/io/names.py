"""What file names say: labels or images, which frame, which CTC slice, which files pair up.

The Cell Tracking Challenge names its label files ``man_segTTT.tif`` (frame TTT, the whole frame)
and ``man_seg_TTT_ZZZ.tif`` (slice ZZZ of 3D frame TTT, annotated on its own); the second form is
parsed by :func:`ctc_slice` alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cellsynth.io.tiff import IMAGE_SUFFIXES

LABEL_DIR_NAMES = ("labels", "masks", "SEG", "seg", "gt", "GT", "TRA")
_LABEL_STEM = re.compile(
    r"^(man_seg|man_track|mask|masks|label|labels|seg)[_-]?\d*|"
    r"[_-](mask|masks|label|labels|seg|gt)$",
    re.IGNORECASE,
)
_CTC_SLICE = re.compile(r"^man_seg_?(\d+)_(\d+)$")
_CTC_FRAME = re.compile(r"^(?:man_seg|man_track|mask)_?(\d+)$")
_TRAILING_INT = re.compile(r"(\d+)(?!.*\d)")


def ctc_slice(stem: str) -> tuple[int, int] | None:
    """``(frame, z)`` of a CTC slice-wise annotation (``man_seg_TTT_ZZZ`` or
    ``man_segTTT_ZZZ``), None for any other name."""
    m = _CTC_SLICE.match(stem)
    return (int(m.group(1)), int(m.group(2))) if m else None


def ctc_frame(stem: str) -> int | None:
    """The frame of a CTC whole-frame label file (``man_segTTT``, ``man_seg_TTT``,
    ``man_trackTTT``, ``maskTTT``), None for any other name."""
    m = _CTC_FRAME.match(stem)
    return int(m.group(1)) if m else None


def group_slices(files: Iterable[Path]) -> tuple[list[Path], dict[int, dict[int, Path]]]:
    """Split label files into whole-frame ones and CTC slice-wise ones, the latter grouped as
    ``{frame: {z: path}}`` (several slice files make one 3D frame)."""
    whole: list[Path] = []
    slices: dict[int, dict[int, Path]] = {}
    for p in files:
        tz = ctc_slice(name_stem(p))
        if tz is None:
            whole.append(p)
        else:
            slices.setdefault(tz[0], {})[tz[1]] = p
    return whole, slices


def frame_key(name: str) -> int | str:
    """The frame a file name refers to: its last integer (``t013`` -> 13), else the name."""
    tz = ctc_slice(name)
    if tz is not None:
        return tz[0]
    m = _TRAILING_INT.search(name)
    return int(m.group(1)) if m else name


def is_label_name(path: str | Path) -> bool:
    """True when a file's name or folder says it holds labels (masks/, SEG/, man_seg*, *_mask)."""
    path = Path(path)
    if path.parent.name in LABEL_DIR_NAMES:
        return True
    return bool(_LABEL_STEM.search(name_stem(path)))


def list_images(folder: Path) -> list[Path]:
    """The image files of a folder (hidden files left out), sorted by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def name_stem(p: Path) -> str:
    """The name without any suffix (``a.ome.tif`` -> ``a``)."""
    return p.name.split(".")[0]


def pair_files(
    images: Sequence[Path], labels: Sequence[Path]
) -> list[tuple[Path | None, Path | None]]:
    """Pair image and label files: same stem first, then the same frame number.

    Files left without a partner are returned alone (``(image, None)`` or ``(None, labels)``).
    """
    by_stem = {name_stem(p): p for p in labels}
    out: list[tuple[Path | None, Path | None]] = []
    left_img: list[Path] = []
    used: set[Path] = set()
    for img in images:
        lab = by_stem.get(name_stem(img))
        if lab is not None:
            out.append((img, lab))
            used.add(lab)
        else:
            left_img.append(img)
    left_lab = [p for p in labels if p not in used]
    if left_img and left_lab:
        key_lab: dict[Any, list[Path]] = {}
        for p in left_lab:
            key_lab.setdefault(_token_key(name_stem(p)), []).append(p)
        still: list[Path] = []
        for img in left_img:
            cands = key_lab.get(_token_key(name_stem(img)), [])
            if len(cands) == 1:
                out.append((img, cands[0]))
                used.add(cands[0])
            else:
                still.append(img)
        left_img = still
        left_lab = [p for p in labels if p not in used]
    out.extend((img, None) for img in left_img)
    out.extend((None, lab) for lab in left_lab)
    return out


def _token_key(stem: str) -> Any:
    tz = ctc_slice(stem)
    if tz is not None:
        return tz
    s = re.sub(r"(man_seg|man_track|masks?|labels?|images?|img|raw|seg|gt)", "", stem.lower())
    s = s.strip("_-. ")
    m = re.fullmatch(r"t?(\d+)", s)
    if m:
        return int(m.group(1))
    m = _TRAILING_INT.search(s)
    return int(m.group(1)) if m and re.fullmatch(r"[a-z_-]*\d+", s) else s
