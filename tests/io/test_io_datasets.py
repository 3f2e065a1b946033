"""One image and its masks from each 2D data set in ``shared/data``: shapes agree, labels sane."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medrefine.io import read_image, read_mask

FOLDERS = [
    "kvasir_seg",
    "ph2",
    "covid_cxr_lungs_v7",
    "covid_cxr_lungs",
    "busi",
    "covid_ct_lung_infection_ma",
    "medseg_covid_ct_infnet",
    "mni152_nifti/slices2d",
]


@pytest.mark.parametrize("name", FOLDERS)
def test_first_image_and_mask(data_dir: Path, name: str) -> None:
    folder = data_dir / name
    if not (folder / "images").is_dir():
        pytest.skip(f"{folder}/images not found")
    image_path = sorted((folder / "images").iterdir())[0]
    image = read_image(image_path)
    assert image.array.ndim == 3 and image.array.shape[0] in (1, 3)
    assert 0 <= image.array.min() and image.array.max() <= 255
    assert image.meta["format"] in ("png", "jpeg")
    for mask_folder in sorted(folder.glob("masks*")):
        mask_path = next(mask_folder.glob(image_path.stem + ".*"))
        mask = read_mask(mask_path, like=image)  # like= checks the shape
        assert mask.dtype == np.uint8 and mask.shape == image.spatial_shape
        assert int(mask.max()) <= 3  # binary 0/255 became 0/1; multi-class keeps 1..3
