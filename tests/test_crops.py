"""Crops as the authors make them (declip.data.crops) against PIL / torchvision, the libraries upstream uses.

The references run PIL on float ('F' mode) images, so the comparison is exact up to float rounding:
DeCLIP/CLIPSelf `ResizeMaxSize` (PIL crop of the original image, bicubic resize of the long side, padding
split equally) and OpenMask3D's `clip_preprocess` (torchvision Resize(short side) + CenterCrop).
"""

import numpy as np
import pytest
import torch
from PIL import Image

from declip.data.crops import box_crops, clip_center_crop, pil_box


def _image(h=50, w=70, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random((3, h, w)).astype(np.float32))


def _pil_channels(img):
    return [Image.fromarray(img[c].numpy(), mode="F") for c in range(3)]


def _resize_max_size_reference(img, box, size):
    """PIL: Image.crop(box) (coordinates rounded), long side -> size (BICUBIC), pad [w//2, h//2, rest]."""
    chans = []
    for ch in _pil_channels(img):
        crop = ch.crop(tuple(int(round(v)) for v in box))
        w, h = crop.size
        scale = size / max(w, h)
        nw, nh = round(w * scale), round(h * scale)
        small = np.clip(np.asarray(crop.resize((nw, nh), Image.BICUBIC)), 0, 1)
        out = np.zeros((size, size), np.float32)
        top, left = (size - nh) // 2, (size - nw) // 2
        out[top:top + nh, left:left + nw] = small
        chans.append(out)
    return torch.from_numpy(np.stack(chans))


@pytest.mark.parametrize("box,size", [((3.4, 5.6, 40.5, 25.2), 32),   # wide: padding top/bottom, odd split
                                      ((10, 10, 20, 16), 32),          # enlarged
                                      ((5, 2, 17, 49), 24),            # tall: padding left/right
                                      ((0, 0, 70, 50), 24)])
def test_box_crops_match_resize_max_size_on_the_original(box, size):
    img = _image()
    got = box_crops(img, [box], size)[0]
    torch.testing.assert_close(got, _resize_max_size_reference(img, box, size), atol=2e-6, rtol=0)


def test_crop_is_centred_not_top_left():
    img = torch.ones(3, 10, 40)
    crop = box_crops(img, [(0, 0, 40, 10)], 16)[0]  # 16 x 4 content: 6 rows of padding above and below
    assert crop[:, :6].abs().max() == 0 and crop[:, 10:].abs().max() == 0
    torch.testing.assert_close(crop[:, 6:10], torch.ones(3, 4, 16))


def test_pil_box_rounds_like_pil_and_stays_inside():
    assert pil_box((2.5, 3.5, 10.49, 7.51), 20, 20) == (2, 4, 10, 8)  # Python (banker's) rounding, as PIL
    assert pil_box((-3, -1, 99, 99), 20, 10) == (0, 0, 20, 10)


@pytest.mark.parametrize("shape", [(50, 70), (70, 50), (33, 33), (12, 40)])
def test_clip_center_crop_matches_torchvision_resize_and_center_crop(shape):
    from torchvision import transforms as T

    img = _image(*shape, seed=1)
    size = 24
    ref = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)])
    want = torch.from_numpy(np.stack([np.clip(np.asarray(ref(ch)), 0, 1) for ch in _pil_channels(img)]))
    torch.testing.assert_close(clip_center_crop(img, size), want, atol=2e-6, rtol=0)


def test_distillation_items_carry_the_original_for_the_crop_teacher(tmp_path):
    """Regions are drawn on the letterbox; box / scale is the same region of the original image, which is
    what the teacher crops are cut from (DeCLIP training/data.py crops `old_image`)."""
    from declip.distill.data import LetterboxDataset, collate
    from declip.distill.regions import grid_cells

    arr = (np.random.default_rng(2).random((30, 45, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    item = LetterboxDataset([("a", tmp_path / "a.png")], 24)[0]
    batch = collate([item])
    assert batch["original"][0].shape == (3, 30, 45) and batch["image"].shape == (1, 3, 24, 24)
    h, w = batch["size"][0].tolist()  # 16 x 24 content
    cells = grid_cells(h, w, 2, 3).double() / batch["scale"][0]
    torch.testing.assert_close(cells[-1], torch.tensor([30.0, 15.0, 45.0, 30.0], dtype=torch.float64))
    torch.testing.assert_close(batch["original"][0], torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
