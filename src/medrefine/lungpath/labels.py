"""The label map's values (issue 13): 0 outside the lung, 1..5 the lung classes."""

from __future__ import annotations

LABELS = {"healthy": 1, "emphysema": 2, "ground_glass": 3, "consolidation": 4, "fibrosis": 5}
CLASS_NAMES = tuple(LABELS)  # in label order 1..5
# For the JSON report and the DICOM-SEG segment labels
DISPLAY_NAMES = {
    "healthy": "Healthy lung",
    "emphysema": "Emphysema",
    "ground_glass": "Ground-glass opacity",
    "consolidation": "Consolidation",
    "fibrosis": "Fibrosis",
}
# Overlay colours (RGB, 0..255), one per label 1..5
COLOURS = {
    1: (60, 160, 60),
    2: (60, 120, 255),
    3: (255, 210, 0),
    4: (230, 40, 40),
    5: (200, 60, 220),
}
