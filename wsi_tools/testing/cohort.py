"""A small synthetic lymphatic-invasion cohort: Aperio SVS slides + ASAP XMLs.

What is drawn (level 0 at 0.5 µm/px, H&E-like colours):

* stroma: pink, textured, with scattered elongated stromal nuclei;
* **LI positive** (hard slides, group ``LI_positive``): a thin-walled
  lymphatic vessel (white lumen, thin pink endothelial rim with flat nuclei)
  holding an irregular cluster of tumour cells (large dark purple nuclei on
  pale purple cytoplasm);
* **LI negative** (hard slides, group ``LI_negative``): the same kind of
  vessel, empty or holding red blood cells (small red discs); like real
  vessels, both may hold a few lymphocytes (small round dark nuclei);
* **mimics** (unannotated, everywhere; the main content of weak slides):
  vessels with red cells, and glands with retraction spaces (a ring of
  epithelium with basal purple nuclei around a small lumen, separated from
  the stroma by a white cleft).

Hard slides carry annotations around vessels; weak slides carry none and
have no LI at all, as in the paper's weakly labelled set. The proportions are
set once from the biology above and are not tuned to any model result.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from shapely.geometry import Polygon

from wsi_tools.annotations import Annotation, write_asap_xml
from wsi_tools.options import at_least, between, option, positive, unit_interval, validate
from wsi_tools.testing.synth import BACKGROUND, write_aperio_svs

POSITIVE_GROUP = "LI_positive"
NEGATIVE_GROUP = "LI_negative"
GROUP_COLORS = {POSITIVE_GROUP: "#d62728", NEGATIVE_GROUP: "#2ca02c"}

# H&E colours (RGB) before the per-slide stain shift.
BASE_COLORS: dict[str, tuple[int, int, int]] = {
    "stroma": (228, 165, 200),
    "stromal_nucleus": (110, 60, 150),
    "lumen": (246, 243, 246),
    "endothelium": (205, 120, 170),
    "tumour_cytoplasm": (175, 120, 185),
    "tumour_nucleus": (75, 35, 115),
    "red_cell": (214, 62, 78),
    "red_cell_edge": (180, 40, 60),
    "gland_cytoplasm": (200, 140, 195),
    "gland_nucleus": (95, 50, 135),
    "lymphocyte": (72, 40, 125),
}


def _palette(rng: np.random.Generator) -> dict[str, tuple[int, int, int]]:
    """The colours of one slide: a per-channel stain shift, as between scanner runs."""
    shift = rng.uniform(0.94, 1.04, size=3)
    return {
        name: (
            int(min(255, round(color[0] * shift[0]))),
            int(min(255, round(color[1] * shift[1]))),
            int(min(255, round(color[2] * shift[2]))),
        )
        for name, color in BASE_COLORS.items()
    }


def _count_range(value: tuple[int, int]) -> str | None:
    return None if 0 <= value[0] <= value[1] else "must be [low, high] with 0 <= low <= high"


def _radius_range(value: tuple[float, float]) -> str | None:
    return None if 0 < value[0] <= value[1] else "must be [low, high] with 0 < low <= high"


@dataclass(frozen=True)
class CohortConfig:
    """Size and make-up of the cohort. Lengths are level-0 px at ``mpp``."""

    n_hard_slides: int = option(
        12, "annotated slides (a pipeline splits them by slide into train/val/test)", check=at_least(1)
    )
    n_weak_slides: int = option(6, "weak slides (no LI, only mimics): the mining pool", check=at_least(0))
    width: int = option(8192, "level-0 width in px", check=at_least(1024))
    height: int = option(6144, "level-0 height in px", check=at_least(1024))
    mpp: float = option(0.5, "level-0 µm/px", check=positive)
    positives_per_slide: tuple[int, int] = option(
        (8, 14), "LI-positive annotated vessels per hard slide (inclusive range)", check=_count_range
    )
    negatives_per_slide: tuple[int, int] = option(
        (10, 18), "LI-negative annotated vessels per hard slide (inclusive range)", check=_count_range
    )
    negative_red_cell_share: float = option(
        0.4, "share of annotated negative vessels holding red cells (the rest are empty)", check=unit_interval
    )
    mimics_per_hard_slide: int = option(10, "unannotated mimics per hard slide", check=at_least(0))
    mimics_per_weak_slide: int = option(60, "mimics per weak slide", check=at_least(0))
    gland_share: float = option(
        0.5,
        "share of mimics that are glands with retraction spaces (the rest: red-cell vessels)",
        check=unit_interval,
    )
    vessel_radius_um: tuple[float, float] = option(
        (45.0, 110.0), "vessel radius range in µm", check=_radius_range
    )
    # Centres of annotated regions are at least this far apart, so a negative's patch
    # rarely reaches a positive annotation.
    min_region_spacing: int = option(
        700, "least distance between annotated regions, level-0 px", check=at_least(0)
    )
    seed: int = option(0, "seed of the whole cohort", check=between(0, 2**32 - 1))
    quality: int = option(85, "JPEG quality of the slides' tiles", check=between(1, 100))

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class CohortSlide:
    slide_id: str
    slide_path: Path
    set: str  # "hard" | "weak"
    annotation_path: Path | None
    n_positive: int = 0
    n_negative: int = 0


@dataclass(frozen=True)
class Cohort:
    root: Path
    slides: tuple[CohortSlide, ...]
    manifest_path: Path
    config: CohortConfig = field(default_factory=CohortConfig)

    def by_set(self, name: str) -> list[CohortSlide]:
        return [slide for slide in self.slides if slide.set == name]


def generate_cohort(out_dir: str | Path, config: CohortConfig = CohortConfig()) -> Cohort:
    """Write ``hard/*.svs`` + ``hard/*.xml``, ``weak/*.svs`` and ``manifest.csv``
    (columns ``slide_path,set,annotation_path,slide_id``, paths relative to it)."""
    root = Path(out_dir)
    (root / "hard").mkdir(parents=True, exist_ok=True)
    (root / "weak").mkdir(parents=True, exist_ok=True)
    slides: list[CohortSlide] = []
    for index in range(config.n_hard_slides):
        slides.append(_write_hard_slide(root / "hard", f"hard_{index:02d}", config, seed_offset=index))
    for index in range(config.n_weak_slides):
        slides.append(_write_weak_slide(root / "weak", f"weak_{index:02d}", config, seed_offset=1000 + index))
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["slide_path", "set", "annotation_path", "slide_id"])
        for slide in slides:
            annotation = slide.annotation_path.relative_to(root) if slide.annotation_path else ""
            writer.writerow([slide.slide_path.relative_to(root), slide.set, annotation, slide.slide_id])
    return Cohort(root=root, slides=tuple(slides), manifest_path=manifest, config=config)


def cohort_from_folder(root: str | Path, config: CohortConfig = CohortConfig()) -> Cohort:
    """A cohort written earlier by :func:`generate_cohort`, read back from its manifest."""
    from wsi_tools.annotations import read_asap_xml

    root = Path(root)
    manifest = root / "manifest.csv"
    slides = []
    with manifest.open(newline="") as handle:
        for row in csv.DictReader(handle):
            annotation = root / row["annotation_path"] if row["annotation_path"] else None
            groups = [a.group for a in read_asap_xml(annotation).annotations] if annotation else []
            slides.append(
                CohortSlide(
                    row["slide_id"],
                    root / row["slide_path"],
                    row["set"],
                    annotation,
                    groups.count(POSITIVE_GROUP),
                    groups.count(NEGATIVE_GROUP),
                )
            )
    return Cohort(root=root, slides=tuple(slides), manifest_path=manifest, config=config)


# ------------------------------------------------------------------ slides


def _write_hard_slide(folder: Path, slide_id: str, config: CohortConfig, seed_offset: int) -> CohortSlide:
    painter = _Painter(config, seed_offset)
    placer = _Placer(painter.rng, painter.tissue, config.min_region_spacing)
    rng = painter.rng
    annotations: list[Annotation] = []
    n_pos = int(rng.integers(config.positives_per_slide[0], config.positives_per_slide[1] + 1))
    n_neg = int(rng.integers(config.negatives_per_slide[0], config.negatives_per_slide[1] + 1))
    kinds = ["positive"] * n_pos + ["negative"] * n_neg
    rng.shuffle(kinds)
    for kind in kinds:
        radius = painter.px(rng.uniform(*config.vessel_radius_um))
        centre = placer.place(radius * 1.3)
        if centre is None:  # the slide is full
            continue
        if kind == "positive":
            content, group, label = "tumour", POSITIVE_GROUP, 1
        else:
            red = rng.random() < config.negative_red_cell_share
            content, group, label = ("red_cells" if red else "empty"), NEGATIVE_GROUP, 0
        outline = painter.vessel(centre, radius, content)
        annotations.append(
            Annotation(
                name=f"{group} {len(annotations)}",
                type="polygon",
                group=group,
                group_chain=(group,),
                geometry=Polygon(outline),
                color=GROUP_COLORS[group],
                label=label,
            )
        )
    painter.mimics(placer, config.mimics_per_hard_slide)
    slide_path = painter.write(folder / f"{slide_id}.svs")
    xml_path = write_asap_xml(annotations, folder / f"{slide_id}.xml", groups=GROUP_COLORS)
    labels = [a.label for a in annotations]
    return CohortSlide(slide_id, slide_path, "hard", xml_path, labels.count(1), labels.count(0))


def _write_weak_slide(folder: Path, slide_id: str, config: CohortConfig, seed_offset: int) -> CohortSlide:
    painter = _Painter(config, seed_offset)
    placer = _Placer(painter.rng, painter.tissue, spacing=painter.px(120))
    painter.mimics(placer, config.mimics_per_weak_slide)
    return CohortSlide(slide_id, painter.write(folder / f"{slide_id}.svs"), "weak", None)


# ------------------------------------------------------------------ drawing


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a coarse random grid resized up."""
    coarse = rng.random((cells, max(2, cells * shape[1] // max(shape[0], 1)))).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _irregular_outline(
    rng: np.random.Generator, centre: tuple[float, float], radius: float, wobble: float, n_points: int = 72
) -> np.ndarray:
    """A closed, star-shaped polygon: radius modulated by a few low harmonics."""
    theta = np.linspace(0, 2 * np.pi, n_points, endpoint=False)
    profile = np.ones_like(theta)
    for harmonic in (2, 3, 4, 5):
        profile += (
            wobble / harmonic * rng.uniform(-1, 1) * np.sin(harmonic * theta + rng.uniform(0, 2 * np.pi))
        )
    aspect = rng.uniform(0.75, 1.0)
    angle = rng.uniform(0, np.pi)
    x = radius * profile * np.cos(theta)
    y = radius * profile * np.sin(theta) * aspect
    rotated_x = x * math.cos(angle) - y * math.sin(angle)
    rotated_y = x * math.sin(angle) + y * math.cos(angle)
    return np.stack([rotated_x + centre[0], rotated_y + centre[1]], axis=1)


def _shrunk(outline: np.ndarray, centre: tuple[float, float], factor: float) -> np.ndarray:
    return np.asarray(centre) + (outline - np.asarray(centre)) * factor


def _points_inside(rng: np.random.Generator, outline: np.ndarray, n_points: int) -> np.ndarray:
    """Uniform random points inside a polygon (rejection in its bounding box)."""
    lo, hi = outline.min(axis=0), outline.max(axis=0)
    contour = outline.astype(np.float32).reshape(-1, 1, 2)
    found: list[np.ndarray] = []
    for _ in range(20):
        if sum(len(f) for f in found) >= n_points:
            break
        candidates = rng.uniform(lo, hi, size=(max(n_points * 2, 16), 2))
        inside = [cv2.pointPolygonTest(contour, (float(x), float(y)), False) > 0 for x, y in candidates]
        found.append(candidates[np.asarray(inside, dtype=bool)])
    return np.concatenate(found)[:n_points] if found else np.zeros((0, 2))


class _Painter:
    """One slide's canvas: stroma first, then vessels, glands and cells on top."""

    def __init__(self, config: CohortConfig, seed_offset: int) -> None:
        self.config = config
        self.rng = np.random.default_rng([config.seed, seed_offset])
        self.colors = _palette(self.rng)
        self.canvas, self.tissue = self._stroma()

    def px(self, microns: float) -> float:
        """Level-0 pixels of a length in µm."""
        return microns / self.config.mpp

    def write(self, path: Path) -> Path:
        return write_aperio_svs(
            path,
            self.canvas,
            mpp=self.config.mpp,
            app_mag=round(10 / self.config.mpp),
            quality=self.config.quality,
        )

    def _fill(self, outline: np.ndarray, color: str) -> None:
        cv2.fillPoly(self.canvas, [np.round(outline).astype(np.int32)], self.colors[color], cv2.LINE_AA)

    def _ellipse(
        self, centre: Sequence[float], axes_um: tuple[float, float], angle: float, color: str
    ) -> None:
        axes = (max(1, int(self.px(axes_um[0]))), max(1, int(self.px(axes_um[1]))))
        cv2.ellipse(
            self.canvas,
            (int(centre[0]), int(centre[1])),
            axes,
            angle,
            0,
            360,
            self.colors[color],
            -1,
            cv2.LINE_AA,
        )

    def _stroma(self) -> tuple[np.ndarray, np.ndarray]:
        """Pink textured tissue over most of the slide, glass around an irregular edge."""
        rng, width, height = self.rng, self.config.width, self.config.height
        small = (height // 8, width // 8)
        yy, xx = np.mgrid[0 : small[0], 0 : small[1]].astype(np.float32)
        # A centred ellipse wobbled by noise: one main piece of tissue.
        ellipse = ((xx / small[1] - 0.5) / 0.47) ** 2 + ((yy / small[0] - 0.5) / 0.45) ** 2
        tissue_small = (ellipse + 0.5 * (_value_noise(rng, small, 4) - 0.5)) < 1.0
        tissue = (
            cv2.resize(tissue_small.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        )
        # Stroma shade from smooth noise, through a per-channel lookup table (uint8 all the way).
        shade: np.ndarray = (_value_noise(rng, small, max(8, width // 96)) * 255).astype(np.uint8)
        shade = cv2.resize(shade, (width, height), interpolation=cv2.INTER_LINEAR)
        levels = 0.88 + 0.2 * np.arange(256, dtype=np.float32) / 255
        lut = np.stack([np.clip(c * levels, 0, 255) for c in self.colors["stroma"]], axis=1).astype(np.uint8)
        canvas = cv2.LUT(cv2.merge([shade, shade, shade]), lut.reshape(256, 1, 3))
        canvas[~tissue] = BACKGROUND
        # Stromal nuclei: small elongated dark ellipses, about one per 45 µm square.
        ys, xs = np.nonzero(tissue[::16, ::16])
        n_nuclei = int(tissue.sum() / self.px(45) ** 2)
        self.canvas = canvas
        if len(xs):
            for pick in rng.integers(0, len(xs), n_nuclei):
                axes = (rng.uniform(3.5, 6), rng.uniform(1.2, 2))
                self._ellipse(
                    (xs[pick] * 16, ys[pick] * 16), axes, float(rng.uniform(0, 180)), "stromal_nucleus"
                )
        return canvas, tissue

    def vessel(self, centre: tuple[float, float], radius: float, content: str) -> np.ndarray:
        """A thin-walled vessel holding ``content`` (tumour, red_cells, empty);
        returns its outer outline (the annotation)."""
        outline = _irregular_outline(self.rng, centre, radius, wobble=0.35)
        wall = max(2.0, self.px(2.5))  # ~2.5 µm endothelial wall
        self._fill(outline, "endothelium")
        lumen = _shrunk(outline, centre, 1 - wall / radius)
        self._fill(lumen, "lumen")
        # Flat endothelial nuclei along the wall.
        for point in outline[self.rng.choice(len(outline), size=6, replace=False)]:
            along = np.degrees(np.arctan2(point[1] - centre[1], point[0] - centre[0])) + 90
            self._ellipse(point, (5, 1.2), float(along), "stromal_nucleus")
        if content == "tumour":
            self._tumour_cluster(centre, radius)
        elif content == "red_cells":
            self._red_cells(lumen)
            self._lymphocytes(lumen, int(self.rng.integers(0, 7)))
        else:
            self._lymphocytes(lumen, int(self.rng.integers(0, 3)))
        return outline

    def _lymphocytes(self, lumen: np.ndarray, count: int) -> None:
        """A few lymphocytes in a lumen: round dark nuclei of ~7 µm."""
        for point in _points_inside(self.rng, _shrunk(lumen, lumen.mean(axis=0), 0.85), count):
            self._ellipse(point, (3.5, 3.3), float(self.rng.uniform(0, 180)), "lymphocyte")

    def _tumour_cluster(self, centre: tuple[float, float], radius: float) -> None:
        """An irregular nest of tumour cells floating in the lumen (a retraction gap remains)."""
        rng = self.rng
        offset = rng.uniform(-0.2, 0.2, size=2) * radius
        nest_centre = (centre[0] + offset[0], centre[1] + offset[1])
        # From a small group of cells to a nest filling much of the lumen.
        nest = _irregular_outline(rng, nest_centre, radius * rng.uniform(0.15, 0.65), wobble=0.5)
        self._fill(nest, "tumour_cytoplasm")
        nucleus_radius = self.px(5.5)
        area = cv2.contourArea(nest.astype(np.float32))
        n_nuclei = max(4, int(area / (math.pi * nucleus_radius**2) * 0.8))
        for point in _points_inside(rng, nest, n_nuclei):
            axes = (5.5 * rng.uniform(0.8, 1.3), 5.5 * rng.uniform(0.6, 1.0))
            self._ellipse(point, axes, float(rng.uniform(0, 180)), "tumour_nucleus")

    def _red_cells(self, lumen: np.ndarray) -> None:
        """Red blood cells: 7 µm discs, packed over part of the lumen, settled to one side."""
        rng = self.rng
        cell_radius = max(2, int(round(self.px(3.5))))
        fill = rng.uniform(0.3, 0.9)
        n_cells = int(cv2.contourArea(lumen.astype(np.float32)) * fill / (math.pi * cell_radius**2))
        anchor = lumen[rng.integers(len(lumen))]
        region = _shrunk(lumen, anchor, math.sqrt(fill))
        for x, y in _points_inside(rng, region, n_cells):
            cv2.circle(
                self.canvas, (int(x), int(y)), cell_radius, self.colors["red_cell_edge"], -1, cv2.LINE_AA
            )
            cv2.circle(
                self.canvas,
                (int(x), int(y)),
                max(1, cell_radius - 2),
                self.colors["red_cell"],
                -1,
                cv2.LINE_AA,
            )

    def gland(self, centre: tuple[float, float], radius: float) -> None:
        """A gland with a retraction space: white cleft, epithelial ring, small lumen."""
        rng = self.rng
        cleft = _irregular_outline(rng, centre, radius, wobble=0.25)
        self._fill(cleft, "lumen")
        body = _shrunk(cleft, centre, rng.uniform(0.72, 0.85))
        self._fill(body, "gland_cytoplasm")
        self._fill(_shrunk(cleft, centre, rng.uniform(0.2, 0.35)), "lumen")
        # Basal nuclei: a ring of elongated nuclei near the gland's edge, pointing inwards.
        ring = _shrunk(body, centre, 0.85)
        step = max(1, len(ring) // max(8, int(radius * self.config.mpp)))
        for point in ring[::step]:
            pointing = np.degrees(np.arctan2(point[1] - centre[1], point[0] - centre[0]))
            self._ellipse(point, (4.5, 2.2), float(pointing), "gland_nucleus")

    def mimics(self, placer: _Placer, count: int) -> None:
        """LI mimics: glands with retraction spaces and vessels with red cells."""
        for _ in range(count):
            radius = self.px(self.rng.uniform(*self.config.vessel_radius_um))
            centre = placer.place(radius * 1.2, spacing_override=radius * 2.6)
            if centre is None:
                return
            if self.rng.random() < self.config.gland_share:
                self.gland(centre, radius)
            else:
                self.vessel(centre, radius, "red_cells")


class _Placer:
    """Random centres inside tissue, away from the edge and from each other."""

    def __init__(self, rng: np.random.Generator, tissue: np.ndarray, spacing: float) -> None:
        self.rng = rng
        self.tissue = tissue
        self.spacing = spacing
        self.placed: list[tuple[float, float, float]] = []  # x, y, spacing

    def place(
        self, margin: float, spacing_override: float | None = None, attempts: int = 200
    ) -> tuple[float, float] | None:
        height, width = self.tissue.shape
        spacing = spacing_override or self.spacing
        for _ in range(attempts):
            x = self.rng.uniform(margin, width - margin)
            y = self.rng.uniform(margin, height - margin)
            if not self._in_tissue(x, y, margin):
                continue
            if any(math.hypot(x - px, y - py) < max(spacing, other) for px, py, other in self.placed):
                continue
            self.placed.append((x, y, spacing))
            return x, y
        return None

    def _in_tissue(self, x: float, y: float, margin: float) -> bool:
        for dx, dy in ((0, 0), (-margin, 0), (margin, 0), (0, -margin), (0, margin)):
            if not self.tissue[int(y + dy), int(x + dx)]:
                return False
        return True
