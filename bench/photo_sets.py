"""The photo sets the benches compare on: the shared photos as they are, and
"large": group photos of 3 to 12 megapixels assembled from them (real faces,
nothing drawn). Each large photo is a grid of the shared scene and portrait
photos, every one enlarged 2-3x (Lanczos) as a phone camera's resolution would
show the same scene, so faces are as many pixels as in a phone's group photo.
Written once under build/bench/photos/large (the same bytes every run)."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
LARGE_DIR = REPO / "build/bench/photos/large"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# (name, columns, rows, enlargement, tiles): the canvas is the grid of enlarged tiles.
LARGE_LAYOUTS = [
    ("group-3mp", 1, 1, 1.8, ["scenes/bbt1.jpg"]),
    ("group-6mp", 2, 1, 2.0, ["scenes/two_people.jpg", "scenes/bbt2.jpg"]),
    ("group-12mp", 2, 2, 1.7, ["scenes/bbt1.jpg", "scenes/bbt3.jpg", "scenes/two_people.jpg", "scenes/bbt2.jpg"]),
    ("group-7mp", 1, 1, 3.0, ["scenes/two_people.jpg"]),
    ("group-8mp", 2, 2, 2.2, ["scenes/bbt2.jpg", "presidents/obama/obama-480p.jpg", "scenes/bbt3.jpg",
                              "noise/disgusted.jpg"]),
    ("group-10mp", 3, 2, 2.0, ["scenes/bbt3.jpg", "scenes/bbt2.jpg", "presidents/obama/obama-480p.jpg",
                               "noise/neutral.jpg", "noise/happy.jpg", "noise/surprised.jpg"]),
]


def faces_dir() -> Path:
    from tests.conftest import find_faces_dir
    return find_faces_dir()


def shared_photos() -> list[Path]:
    root = faces_dir()
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def large_photos() -> list[Path]:
    """The large set's files, written first if missing."""
    LARGE_DIR.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, columns, rows, enlargement, tiles in LARGE_LAYOUTS:
        path = LARGE_DIR / f"{name}.jpg"
        if not path.exists():
            compose(columns, rows, enlargement, [faces_dir() / tile for tile in tiles]).save(path, quality=92)
        paths.append(path)
    return paths


def compose(columns: int, rows: int, enlargement: float, tiles: list[Path]) -> Image.Image:
    """Tiles enlarged and placed left to right, top to bottom, each cell as large as the largest tile."""
    images = []
    for tile in tiles:
        with Image.open(tile) as image:
            rgb = image.convert("RGB")
        images.append(rgb.resize((round(rgb.width * enlargement), round(rgb.height * enlargement)),
                                 Image.Resampling.LANCZOS))
    cell_width, cell_height = max(i.width for i in images), max(i.height for i in images)
    canvas = Image.new("RGB", (cell_width * columns, cell_height * rows), (128, 128, 128))
    for index, image in enumerate(images):
        column, row = index % columns, index // columns
        canvas.paste(image, (column * cell_width + (cell_width - image.width) // 2,
                             row * cell_height + (cell_height - image.height) // 2))
    return canvas


def megapixels(path: Path) -> float:
    with Image.open(path) as image:
        return image.width * image.height / 1e6
