"""Class colours of segmentation mask overlays (Tableau 10), shared by the recorder's PNGs and the report's
legend; no torch. Class 0 (background) is left uncoloured, classes 1.. cycle through the nine colours."""

from __future__ import annotations

MASK_COLOURS: list[tuple[str, tuple[int, int, int]]] = [
    ("blue", (31, 119, 180)),
    ("orange", (255, 127, 14)),
    ("green", (44, 160, 44)),
    ("red", (214, 39, 40)),
    ("purple", (148, 103, 189)),
    ("brown", (140, 86, 75)),
    ("pink", (227, 119, 194)),
    ("olive", (188, 189, 34)),
    ("cyan", (23, 190, 207)),
]


def mask_colour(c: int) -> tuple[str, tuple[int, int, int]]:
    """(name, rgb) of class c ≥ 1."""
    return MASK_COLOURS[(c - 1) % len(MASK_COLOURS)]


def legend(classes: list[str]) -> str:
    """'5 blue, 6 orange, …' for the classes after the background."""
    return ", ".join(f"{name} {mask_colour(c)[0]}" for c, name in enumerate(classes) if c > 0)
