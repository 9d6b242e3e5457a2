"""Find the cases in a folder and pair them by case id: which file is which subject's MR, CT, low-dose CT or mask.

Names decide (case-insensitively): ``<id>/mr.nii.gz``, ``mr/<id>.nii.gz`` and ``<id>_mr.nii.gz`` are all case
``<id>`` with role ``mr`` (see ``ROLE_ALIASES``); a folder of DICOM files gives one case per series. Folders are
searched following symbolic links, each real folder once, so any link structure ends.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from medtranslate.core.checks import require_exists
from medtranslate.core.errors import InputError
from medtranslate.io.dicom import DICOM_SUFFIXES, is_dicom_file, series_ids

__all__ = [
    "ROLE_ALIASES",
    "NIFTI_SUFFIXES",
    "SITK_SUFFIXES",
    "select_cases",
    "Case",
    "Cohorts",
    "Pair",
    "Scan",
    "case_id_from_name",
    "strip_suffix",
    "find_cases",
    "pair_cases",
    "cohort_cases",
    "usable_id",
]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES + DICOM_SUFFIXES

# Names (case-insensitive) that say which kind of image a file or folder holds.
ROLE_ALIASES: dict[str, str] = {
    "mr": "mr",
    "mri": "mr",
    "t1": "mr",
    "t1w": "mr",
    "ct": "ct",
    "ld": "ld",
    "low": "ld",
    "lowdose": "ld",
    "low_dose": "ld",
    "ldct": "ld",
    "nd": "nd",
    "full": "nd",
    "fulldose": "nd",
    "full_dose": "nd",
    "normal": "nd",
    "ndct": "nd",
    "mask": "mask",
    "body": "mask",
    "bodymask": "mask",
    "body_mask": "mask",
    "sct": "sct",
    "std": "std",  # <case>_sct_std.nii.gz: translate --uncertainty's standard deviation map
    "denoised": "denoised",
    "target": "target",  # a planning target for `medtranslate dose`
    "ptv": "target",
}


@dataclass(frozen=True)
class Case:
    """One readable image found in a folder: a file, or one DICOM series in a folder."""

    case_id: str
    path: Path
    role: str | None = None
    series_uid: str | None = None

    @property
    def label(self) -> str:
        return f"{self.path}" + (f" (series {self.series_uid})" if self.series_uid else "")


@dataclass
class Pair:
    """Cases of one subject matched by id: a source image, a target image and optionally a mask."""

    case_id: str
    source: Case
    target: Case | None = None
    mask: Case | None = None


@dataclass(frozen=True)
class Scan:
    """One image of a cohort: a case's source or target image on its own, with the case's mask file if it has one
    (used when it lies on this image's grid; otherwise the body mask is made from the image)."""

    case_id: str
    role: str
    image: Case
    mask: Case | None = None


@dataclass
class Cohorts:
    """The scans of the source role and of the target role under a folder, each keyed by case id. The two need not
    share a subject: a case holding both roles is a pair (usable for validation and testing), any other case gives
    one scan to one cohort."""

    sources: dict[str, Scan]
    targets: dict[str, Scan]

    @property
    def paired_ids(self) -> list[str]:
        return sorted(set(self.sources) & set(self.targets))

    @property
    def ids(self) -> list[str]:
        return sorted(set(self.sources) | set(self.targets))

    def pair(self, case_id: str) -> Pair:
        src, tgt = self.sources[case_id], self.targets[case_id]
        return Pair(case_id, src.image, tgt.image, src.mask)


def strip_suffix(name: str) -> str:
    """A file name without its image suffix (.nii.gz, .nrrd, .dcm, ...; any case)."""
    low = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _role_of(name: str) -> str | None:
    return ROLE_ALIASES.get(name.lower())


def case_id_from_name(name: str, parent: str) -> tuple[str, str | None]:
    """Case id and role from a file (or DICOM folder) name and its parent folder's name.

    ``<id>/mr.nii.gz``, ``mr/<id>.nii.gz`` and ``mr/<id>_mr.nii.gz`` give (``<id>``, ``"mr"``);
    ``<id>_ct.nii.gz`` gives (``<id>``, ``"ct"``); anything else gives (stem, None).
    """
    stem = strip_suffix(name)
    if _role_of(stem):
        return parent, _role_of(stem)
    match = re.match(r"^(.+?)[_\-.]([A-Za-z0-9]+)$", stem)
    parent_role = _role_of(parent)
    if parent_role:
        # sct/<id>_sct.nii.gz (translate's output in a folder named for its role): the role said twice
        if match and _role_of(match.group(2)) == parent_role:
            return match.group(1), parent_role
        return stem, parent_role
    if match and _role_of(match.group(2)):
        return match.group(1), _role_of(match.group(2))
    return stem, None


def usable_id(case_id: str, path: Path) -> str:
    """A case id that can name output files and folders (never empty, ".", ".." or holding a separator)."""
    if not case_id or case_id in (".", "..") or "/" in case_id or "\\" in case_id:
        raise InputError(f"{path}: no case id can be taken from its name; rename it (e.g. pt01_mr.nii.gz)")
    return case_id


# folders that hold software, never scans: a virtual environment or conda environment beside the scans (its packages'
# test data would be taken for cases), a package cache, a node_modules tree
_SOFTWARE_FOLDERS = {"site-packages", "dist-packages", "node_modules", "__pycache__"}


def _environment(folder: Path) -> bool:
    """True for a folder of software (see _SOFTWARE_FOLDERS, or one holding pyvenv.cfg or conda-meta), not of scans."""
    if folder.name in _SOFTWARE_FOLDERS:
        return True
    try:
        return (folder / "pyvenv.cfg").is_file() or (folder / "conda-meta").is_dir()
    except OSError:
        return False


def find_cases(folder: str | os.PathLike, unique: bool = True) -> list[Case]:
    """List every image case below ``folder`` (or the single case a file is).

    Image files are recognised by suffix (NIfTI, NRRD, MetaImage); a folder holding DICOM files gives one case per
    series (SeriesInstanceUID). Case ids and roles come from names, see :func:`case_id_from_name`. Hidden folders and
    folders of software (a virtual environment, site-packages, node_modules) are not searched. ``unique``: two images
    with the same case id and role are an error (False: both are listed, e.g. to describe them).

    Raises:
        InputError: the path does not exist, holds no images, or two images claim the same id and role.
    """
    root = require_exists(folder)
    if root.is_file():
        # names from the absolute path: "mr.nii.gz" given inside its case folder is that folder's case, not case ""
        cid, role = case_id_from_name(root.name, Path(os.path.abspath(root)).parent.name)
        return [Case(usable_id(cid, root), root, role)]
    cases: list[Case] = []
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        # symbolic links are followed, but each real folder is searched once: a link to a parent (a loop) ends here
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not _environment(Path(dirpath) / d))
        here = Path(dirpath)
        dicom_here = False
        for name in sorted(filenames):
            if name.startswith("."):
                continue  # hidden files, including our own partial outputs
            path = here / name
            low = name.lower()
            if low.endswith(NIFTI_SUFFIXES + SITK_SUFFIXES):
                cid, role = case_id_from_name(name, Path(os.path.abspath(here)).name)  # "." names its folder
                cases.append(Case(usable_id(cid, path), path, role))
            elif low.endswith(DICOM_SUFFIXES) or (not Path(low).suffix and is_dicom_file(path)):
                dicom_here = True
        if dicom_here:
            series = series_ids(here)
            named = Path(os.path.abspath(here))  # "." names the folder it stands for
            cid, role = case_id_from_name(named.name, named.parent.name if here != root else named.name)
            cid = usable_id(cid, here)
            for n, uid in enumerate(series):
                sid = cid if len(series) == 1 else f"{cid}_s{n + 1}"
                cases.append(Case(sid, here, role, series_uid=uid))
            if not series:  # DICOM-looking files that form no series: a case that fails when read, so it is reported
                cases.append(Case(cid, here, role))
    if not cases:
        raise InputError(
            f"{root}: no images found (looked for .nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd and DICOM series); check "
            "the folder"
        )
    seen: dict[tuple[str, str | None], Case] = {}
    for case in cases if unique else []:
        key = (case.case_id, case.role)
        if key in seen:
            raise InputError(
                f"{root}: two images have case id '{case.case_id}'"
                + (f" and role '{case.role}'" if case.role else "")
                + f": {seen[key].label} and {case.label}; rename one so each case id is unique"
            )
        seen[key] = case
    return cases


def _roles_by_id(cases: list[Case]) -> dict[str, dict[str, Case]]:
    """{case id: {role: case}}; an image whose name names no role is under "?"."""
    by_id: dict[str, dict[str, Case]] = {}
    for case in cases:
        by_id.setdefault(case.case_id, {})[case.role or "?"] = case
    return by_id


def pair_cases(
    cases: list[Case],
    source_role: str,
    target_role: str | None,
) -> tuple[list[Pair], dict[str, str]]:
    """Match source and target images (and masks) of the same case id.

    Args:
        cases: from :func:`find_cases`.
        source_role: e.g. "mr" or "ld".
        target_role: e.g. "ct" or "nd"; None when only sources are needed.

    Returns:
        The complete pairs sorted by id, and {case id: reason} for every case that could not be paired.
    """
    by_id = _roles_by_id(cases)
    pairs, unmatched = [], {}
    for cid in sorted(by_id):
        roles = by_id[cid]
        src = roles.get(source_role)
        tgt = roles.get(target_role) if target_role else None
        if src is None:
            unmatched[cid] = f"no {source_role} image (found: {', '.join(sorted(roles))})"
            continue
        if target_role and tgt is None:
            unmatched[cid] = f"no {target_role} image (found: {', '.join(sorted(roles))})"
            continue
        pairs.append(Pair(cid, src, tgt, roles.get("mask")))
    return pairs, unmatched


def cohort_cases(cases: list[Case], source_role: str, target_role: str) -> tuple[Cohorts, dict[str, str]]:
    """Every image of ``source_role`` and every image of ``target_role``, paired or not (see :class:`Cohorts`).

    Returns:
        The cohorts, and {case id: reason} for every case that holds neither role.
    """
    by_id = _roles_by_id(cases)
    sources, targets, unused = {}, {}, {}
    for cid in sorted(by_id):
        roles = by_id[cid]
        for role, cohort in ((source_role, sources), (target_role, targets)):
            if role in roles:
                cohort[cid] = Scan(cid, role, roles[role], roles.get("mask"))
        if source_role not in roles and target_role not in roles:
            unused[cid] = f"no {source_role} or {target_role} image (found: {', '.join(sorted(roles))})"
    return Cohorts(sources, targets), unused


def select_cases(
    path: str | os.PathLike | dict[str, Case] | None, roles: tuple[str | None, ...], what: str
) -> dict[str, Case]:
    """One case per id from ``path``, taking the first role in ``roles`` that the id has (a dict is taken as it is)."""
    if path is None:
        return {}
    if isinstance(path, dict):
        return dict(path)
    by_id: dict[str, dict[str | None, Case]] = {}
    for case in find_cases(path):
        by_id.setdefault(case.case_id, {})[case.role] = case
    chosen = {}
    for cid, available in by_id.items():
        for role in roles:
            if role in available:
                chosen[cid] = available[role]
                break
    if not chosen:
        found = sorted({str(r) for a in by_id.values() for r in a})
        raise InputError(
            f"{path}: no {what} images found (roles looked for: {', '.join(str(r) for r in roles if r)}; found: "
            f"{', '.join(found)})"
        )
    return chosen
