"""The one mask reader (``bundle.images.read_mask_values``): training's ``LoadMaskd`` gives, for every kind of mask
file people have, the label MONAI's ``LoadImaged`` + ``LesionMaskd`` gave before, and the pair checks read the same.
"""

from __future__ import annotations

import io

import itk
import nibabel as nib
import nrrd
import numpy as np
import pytest
from monai.transforms import LoadImaged
from PIL import Image

from bundle.errors import BadInputError
from bundle.images import read_mask, read_mask_values
from bundle.transforms import LesionMaskd, LoadMaskd

WIDTH, HEIGHT = 40, 24  # not square, and the lesion off-centre, so that a transposed or flipped read shows


def lesion_hw() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[3:11, 5:30] = True
    mask[15:20, 30:36] = True
    return mask


def mask_files(folder) -> dict[str, str]:
    """One file per kind of mask: Pillow modes and formats, and 3D Slicer's labelmaps as Slicer writes them."""
    mask = lesion_hw()
    grey = np.where(mask, 255, 0).astype(np.uint8)
    red = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    red[..., 0] = grey
    images = {
        "grey.png": Image.fromarray(grey),
        "zero_one.png": Image.fromarray(mask.astype(np.uint8)),
        "palette.png": Image.fromarray(grey).convert("P"),
        "bilevel.png": Image.fromarray(grey).convert("1"),
        "sixteen_bit.png": Image.fromarray(np.where(mask, 65535, 0).astype(np.uint16)),
        "red_on_black.png": Image.fromarray(red),
        "jpeg.jpg": Image.fromarray(grey),
        "bitmap.bmp": Image.fromarray(grey),
    }
    paths = {}
    for name, image in images.items():
        paths[name] = str(folder / name)
        image.save(paths[name])
    # Slicer's labelmaps: voxels (W, H, 1), affine diag(-1, -1, 1)
    voxels = mask.T[..., None].astype(np.uint8)
    paths["slicer.nii.gz"] = str(folder / "slicer.nii.gz")
    nib.save(nib.Nifti1Image(voxels, np.diag([-1.0, -1.0, 1.0, 1.0])), paths["slicer.nii.gz"])
    paths["slicer.nrrd"] = str(folder / "slicer.nrrd")
    header = {"space": "left-posterior-superior", "space directions": np.eye(3), "space origin": np.zeros(3)}
    nrrd.write(paths["slicer.nrrd"], voxels, header, index_order="F")
    paths["slicer.mha"] = str(folder / "slicer.mha")  # ITK's arrays are (z, y, x)
    itk.imwrite(itk.image_from_array(np.ascontiguousarray(voxels.transpose(2, 1, 0))), paths["slicer.mha"])
    return paths


def test_load_maskd_gives_what_loadimaged_and_lesionmaskd_gave(tmp_path):
    """The training label is unchanged by the move to the one reader, for every kind of mask file."""
    old = LesionMaskd("label")
    for name, path in mask_files(tmp_path).items():
        before = old(LoadImaged("label", image_only=True)({"label": path}))["label"]
        after = LoadMaskd("label")({"label": path})["label"]
        assert after.shape == (1, WIDTH, HEIGHT) and np.array_equal(np.asarray(after), np.asarray(before)), name
        assert np.array_equal(np.asarray(after)[0].T > 0.5, lesion_hw()), name  # lined up with the photo
        assert after.meta["filename_or_obj"] == path


def test_read_mask_and_the_pair_check_read_the_same_values(tmp_path):
    for name, path in mask_files(tmp_path).items():
        values = read_mask_values(path)
        assert values.shape[:2] == (HEIGHT, WIDTH), name
        assert np.array_equal(read_mask(path), lesion_hw()), name


def test_unreadable_masks_are_one_line_naming_the_file(tmp_path):
    cases = {
        "empty.png": (b"", "empty file"),
        "html.png": (b"<html>not found</html>", "not an image file that Pillow can identify"),
        "broken.nii.gz": (b"\x1f\x8b not really gzip", "cannot read mask"),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(BadInputError) as caught:
            read_mask_values(path)
        assert str(caught.value).startswith(f"{path}: {reason}") and "\n" not in str(caught.value), name
    volume = tmp_path / "volume.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 6, 3), np.uint8), np.eye(4)), volume)
    with pytest.raises(BadInputError, match=r"is a volume of shape \(8, 6, 3\), not one 2D mask"):
        read_mask_values(volume)
    buffer = io.BytesIO()
    Image.new("LA", (4, 4)).save(buffer, "PNG")
    (tmp_path / "two_channels.png").write_bytes(buffer.getvalue())
    with pytest.raises(BadInputError, match="two_channels.png: mask of shape"):
        LoadMaskd("label")({"label": str(tmp_path / "two_channels.png")})
