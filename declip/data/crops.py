"""Image crops as the authors' code makes them, for the crop teacher and the `crops` classifiers.

- `resize_max_size`: DeCLIP / CLIPSelf src/open_clip/transform.py `ResizeMaxSize` (l.24-47): the long side
  resized to `size` (bicubic), the short side round(side * scale), zero padding split equally, the odd
  pixel right/bottom (`[pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2]`).
- `box_crops`: the crop of the ORIGINAL image (DeCLIP training/data.py `_obtain_image_crops` l.261-280:
  `image.crop((x0, y0, x1, y1))`, PIL rounding each coordinate), then `resize_max_size`.
- `clip_center_crop`: CLIP's own preprocess (short side resized to `size`, bicubic, then a centre crop),
  which OpenMask3D applies to its crops (openmask3d/mask_features_computation/features_extractor.py
  `self.clip_preprocess(cropped_img)`, the `clip.load` transform).

Tensors are float (3, H, W) in [0, 1]; bicubic resizes are antialiased like PIL's. `letterbox`
(declip.data.images) stays the resize of whole images (right/bottom padding keeps token grids aligned).
"""

from __future__ import annotations


def _resize(img, size: tuple[int, int]):
    """Bicubic, antialiased when shrinking (PIL's BICUBIC filter), clamped to [0, 1] like PIL's uint8."""
    import torch.nn.functional as F

    if tuple(img.shape[-2:]) == tuple(size):
        return img
    return F.interpolate(img[None].float(), size=size, mode="bicubic", align_corners=False,
                         antialias=True)[0].clamp(0.0, 1.0)


def resize_max_size(img, size: int):
    """(3, size, size): long side to `size`, centred on zero padding (ResizeMaxSize)."""
    import torch.nn.functional as F

    h, w = img.shape[-2:]
    scale = size / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    out = _resize(img, (max(1, nh), max(1, nw)))
    pad_h, pad_w = size - out.shape[-2], size - out.shape[-1]
    return F.pad(out, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


def clip_center_crop(img, size: int):
    """(3, size, size): short side to `size` (bicubic), centre crop (torchvision Resize(int) + CenterCrop)."""
    h, w = img.shape[-2:]
    if h <= w:
        nh, nw = size, int(size * w / h)  # torchvision keeps the long side as int(size * long / short)
    else:
        nh, nw = int(size * h / w), size
    out = _resize(img, (nh, nw))
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    return out[:, top:top + size, left:left + size]


def pil_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    """PIL `Image.crop` pixel box: each coordinate rounded (Python round), clipped to the image, >= 1 px."""
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    x1, y1 = min(max(x1, 0), width - 1), min(max(y1, 0), height - 1)
    x2, y2 = max(min(x2, width), x1 + 1), max(min(y2, height), y1 + 1)
    return x1, y1, x2, y2


def box_crops(img, boxes, size: int, resize=resize_max_size):
    """(N, 3, size, size): each (x1, y1, x2, y2) box of the original image `img` (3, H, W), cut as PIL does,
    then `resize` (ResizeMaxSize by default)."""
    import torch

    h, w = img.shape[-2:]
    crops = []
    for box in boxes:
        x1, y1, x2, y2 = pil_box(box, w, h)
        crops.append(resize(img[:, y1:y2, x1:x2], size))
    if not crops:
        return img.new_zeros((0, 3, size, size))
    return torch.stack(crops)
