"""Readers of the training-free segmentation benchmarks and their class lists (protocols.md section 2).

Class lists are data: one string per class index, synonyms separated by '; ' (the names SCLIP,
ClearCLIP, NACLIP, ProxyCLIP and DeCLIP's evaluation use, github wangf3014/SCLIP configs/cls_*.txt,
commas turned into '; '). For benchmarks with a background class (VOC21, Context60, COCO-Object) index 0
is background: VOC21 and COCO-Object prompt it with a list of stuff names, Context60 with "background".

Layouts (the mmsegmentation conventions the papers evaluate with; `split` names the subset):
  voc         {root}/JPEGImages/<id>.jpg, SegmentationClass/<id>.png, ids from ImageSets/Segmentation/<split>.txt
  context     {root}/JPEGImages/<id>.jpg, SegmentationClassContext/<id>.png, ImageSets/SegmentationContext/<split>.txt
  ade         {root}/images/<split>/*.jpg, annotations/<split>/<stem>.png                 (reduce_zero_label)
  cocostuff   {root}/images/<split>/*.jpg, annotations/<split>/<stem>_labelTrainIds.png
  coco_object {root}/images/<split>/*.jpg, annotations/<split>/<stem>_instanceTrainIds.png
  cityscapes  {root}/leftImg8bit/<split>/<city>/<x>_leftImg8bit.png, gtFine/<split>/<city>/<x>_gtFine_labelTrainIds.png
  mini2d      {root}/<split>/<id>.png, {root}/semantic/<split>/<id>.png            (index = category id - 1)
  ade847      {root}/images_detectron2/<split>/*.jpg, annotations_detectron2/<split>/<stem>.tif (uint16, 65535 ignore)
  context459  {root}/JPEGImages/<id>.jpg, annotations_detectron2/pc459_<split>/<id>.tif, ids from pascalcontext_<split>.txt
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from declip.config import resolve_path
from declip.data.vocab import CATEGORIES
from declip.errors import UserFacingError

_VOC20: tuple[str, ...] = (
    'aeroplane', 'bicycle', 'bird', 'ship', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'table', 'dog',
    'horse', 'motorbike',
    'person; person in shirt; person in jeans; person in dress; person in sweater; person in skirt; person in jacket',
    'pottedplant', 'sheep', 'sofa', 'train',
    'television monitor; tv monitor; monitor; television; screen',
)
# Background index 0 of VOC21 and COCO-Object: the stuff synonyms SCLIP prompts it with.
_VOC_BACKGROUND = 'sky; wall; tree; wood; grass; road; sea; river; mountain; sands; desk; bed; building; cloud; lamp; door; window; wardrobe; ceiling; shelf; curtain; stair; floor; hill; rail; fence'

_CONTEXT59: tuple[str, ...] = (
    'aeroplane', 'bag', 'bed', 'bedclothes', 'bench', 'bicycle', 'bird', 'boat', 'book', 'bottle',
    'building', 'bus', 'cabinet', 'car', 'cat', 'ceiling', 'chair', 'cloth', 'computer', 'cow', 'cup',
    'curtain', 'dog', 'door', 'fence', 'floor', 'flower', 'food', 'grass', 'ground', 'horse', 'keyboard',
    'light', 'motorbike', 'mountain', 'mouse', 'person', 'plate', 'platform', 'pottedplant', 'road',
    'rock', 'sheep', 'shelves', 'sidewalk', 'sign', 'sky', 'snow', 'sofa', 'table', 'track', 'train',
    'tree', 'truck', 'tvmonitor', 'wall', 'water', 'window', 'wood',
)

CLASS_PROMPTS: dict[str, tuple[str, ...]] = {
    'voc21': (_VOC_BACKGROUND, *_VOC20),  # 21 classes
    'voc20': _VOC20,  # 20 classes
    'context60': ('background', *_CONTEXT59),  # 60 classes
    'context59': _CONTEXT59,  # 59 classes
    'coco_object': (  # 81 classes
        _VOC_BACKGROUND,
        'person; person in shirt; person in jeans; person in dress; person in sweater; person in skirt; person in jacket; body',
        'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
        'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
        'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase',
        'frisbee', 'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard',
        'surfboard', 'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl',
        'banana', 'apple', 'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake',
        'chair', 'couch', 'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote',
        'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock',
        'vase', 'scissors', 'teddy bear', 'hair drier', 'toothbrush',
    ),
    'cityscapes': (  # 19 classes
        'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'trafficlight', 'trafficsign', 'vegetation',
        'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle',
    ),
    'ade150': (  # 150 classes
        'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass',
        'cabinet', 'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair',
        'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair',
        'seat', 'fence', 'desk', 'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box',
        'column', 'signboard', 'chestofdrawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace',
        'refrigerator', 'grandstand', 'path', 'stairs', 'runway', 'case', 'pooltable', 'pillow', 'screendoor',
        'stairway', 'river', 'bridge', 'bookcase', 'blind', 'coffeetable', 'toilet', 'flower', 'book', 'hill',
        'bench', 'countertop', 'stove', 'palm', 'kitchenisland', 'computer', 'swivelchair', 'boat', 'bar',
        'arcademachine', 'hovel', 'bus', 'towel', 'light', 'truck', 'tower', 'chandelier', 'awning',
        'streetlight', 'booth', 'televisionreceiver', 'airplane', 'dirttrack', 'apparel', 'pole', 'land',
        'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster', 'stage', 'van', 'ship', 'fountain',
        'conveyerbelt', 'canopy', 'washer', 'plaything', 'swimmingpool', 'stool', 'barrel', 'basket',
        'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank', 'tradename',
        'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture',
        'hood', 'sconce', 'vase', 'trafficlight', 'tray', 'ashcan', 'fan', 'pier', 'crtscreen', 'plate',
        'monitor', 'bulletinboard', 'shower', 'radiator', 'glass', 'clock', 'flag',
    ),
    'cocostuff171': (  # 171 classes
        'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'trafficlight',
        'firehydrant', 'stopsign', 'parkingmeter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
        'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase',
        'frisbee', 'skis', 'snowboard', 'sportsball', 'kite', 'baseballbat', 'baseballglove', 'skateboard',
        'surfboard', 'tennisracket', 'bottle', 'wineglass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana',
        'apple', 'sandwich', 'orange', 'broccoli', 'carrot', 'hotdog', 'pizza', 'donut', 'cake', 'chair',
        'couch', 'pottedplant', 'bed', 'diningtable', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard',
        'cellphone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase',
        'scissors', 'teddybear', 'hairdrier', 'toothbrush', 'banner', 'blanket', 'branch', 'bridge',
        'building-other', 'bush', 'cabinet', 'cage', 'cardboard', 'carpet', 'ceiling-other', 'ceiling-tile',
        'cloth', 'clothes', 'clouds', 'counter', 'cupboard', 'curtain', 'desk-stuff', 'dirt', 'door-stuff',
        'fence', 'floor-marble', 'floor-other', 'floor-stone', 'floor-tile', 'floor-wood', 'flower', 'fog',
        'food-other', 'fruit', 'furniture-other', 'grass', 'gravel', 'ground-other', 'hill', 'house',
        'leaves', 'light', 'mat', 'metal', 'mirror-stuff', 'moss', 'mountain', 'mud', 'napkin', 'net',
        'paper', 'pavement', 'pillow', 'plant-other', 'plastic', 'platform', 'playingfield', 'railing',
        'railroad', 'river', 'road', 'rock', 'roof', 'rug', 'salad', 'sand', 'sea', 'shelf', 'sky-other',
        'skyscraper', 'snow', 'solid-other', 'stairs', 'stone', 'straw', 'structural-other', 'table', 'tent',
        'textile-other', 'towel', 'tree', 'vegetable', 'wall-brick', 'wall-concrete', 'wall-other',
        'wall-panel', 'wall-stone', 'wall-tile', 'wall-wood', 'water-other', 'waterdrops', 'window-blind',
        'window-other', 'wood',
    ),
    "mini2d": tuple(c.name for c in sorted(CATEGORIES, key=lambda c: c.id)),
}

# Index 0 of these lists is the background class (scored; predicted below prob_thd).
BACKGROUND_LISTS = frozenset({"voc21", "context60", "coco_object"})

# format -> (image folder, image suffix, GT folder, GT suffix, id-list file or None); {split} is filled in.
LAYOUTS: dict[str, tuple[str, str, str, str, str | None]] = {
    "voc": ("JPEGImages", ".jpg", "SegmentationClass", ".png", "ImageSets/Segmentation/{split}.txt"),
    "context": ("JPEGImages", ".jpg", "SegmentationClassContext", ".png", "ImageSets/SegmentationContext/{split}.txt"),
    "ade": ("images/{split}", ".jpg", "annotations/{split}", ".png", None),
    "cocostuff": ("images/{split}", ".jpg", "annotations/{split}", "_labelTrainIds.png", None),
    "coco_object": ("images/{split}", ".jpg", "annotations/{split}", "_instanceTrainIds.png", None),
    "cityscapes": ("leftImg8bit/{split}", "_leftImg8bit.png", "gtFine/{split}", "_gtFine_labelTrainIds.png", None),
    "mini2d": ("{split}", ".png", "semantic/{split}", ".png", None),
    # CAT-Seg's converted 16-bit TIFF labels (github KU-CVLAB/CAT-Seg datasets/prepare_ade20k_full.py,
    # prepare_pascal_context_459.py; registered in cat_seg/data/datasets/register_ade20k_847.py and
    # register_pascal_context.py): ids from the GT folder's split list for PC-459.
    "ade847": ("images_detectron2/{split}", ".jpg", "annotations_detectron2/{split}", ".tif", None),
    "context459": ("JPEGImages", ".jpg", "annotations_detectron2/pc459_{split}", ".tif", "pascalcontext_{split}.txt"),
}


@dataclass(frozen=True)
class SemsegSample:
    image_id: str
    image_path: Path
    gt_path: Path


def class_list_name(benchmark: str, spec: dict) -> str:
    # The mini world's benchmarks (any key) read the mini vocabulary unless told otherwise.
    name = spec.get("classes") or ("mini2d" if spec.get("format", spec.get("kind")) == "mini2d" else benchmark)
    if name not in CLASS_PROMPTS:
        raise UserFacingError(
            f"benchmark {benchmark!r} has no class list {name!r}: set `datasets.{benchmark}.classes` to one of "
            f"{', '.join(sorted(CLASS_PROMPTS))}"
        )
    return name


def class_prompts(benchmark: str, spec: dict) -> list[str]:
    """One '; '-separated synonym string per class index."""
    return list(CLASS_PROMPTS[class_list_name(benchmark, spec)])


def has_background(benchmark: str, spec: dict) -> bool:
    """Class 0 is background: `datasets.<b>.background` when set, else whether the class list has one."""
    return bool(spec.get("background", class_list_name(benchmark, spec) in BACKGROUND_LISTS))


def class_names(benchmark: str, spec: dict) -> list[str]:
    """Display names (metrics keys): the first synonym, 'background' for a background index 0."""
    prompts = class_prompts(benchmark, spec)
    names = [p.split("; ")[0] for p in prompts]
    if has_background(benchmark, spec):
        names[0] = "background"
    return names


def dataset_format(spec: dict) -> str:
    fmt = spec.get("format") or ("mini2d" if spec.get("kind") == "mini2d" else None)
    if fmt not in LAYOUTS:
        raise UserFacingError(
            f"dataset format {fmt!r} has no semantic-segmentation reader: set `datasets.<name>.format` to one of "
            f"{', '.join(sorted(LAYOUTS))}"
        )
    return fmt


def list_samples(spec: dict) -> list[SemsegSample]:
    """Every (image, GT) pair of the split, sorted by id; missing GT files are an error."""
    fmt = dataset_format(spec)
    img_sub, img_suffix, gt_sub, gt_suffix, id_file = LAYOUTS[fmt]
    split = spec.get("split", "val")
    root = resolve_path(spec["root"])
    img_dir, gt_dir = root / img_sub.format(split=split), root / gt_sub.format(split=split)
    if id_file is not None:
        list_path = root / id_file.format(split=split)
        if not list_path.exists():
            raise UserFacingError(f"split list {list_path} not found: check `root` and `split` of the dataset")
        ids = [line.strip() for line in list_path.read_text().splitlines() if line.strip()]
        pairs = [(i, img_dir / f"{i}{img_suffix}", gt_dir / f"{i}{gt_suffix}") for i in ids]
    else:
        if not img_dir.is_dir():
            raise UserFacingError(f"image folder {img_dir} not found: run the dataset step first")
        pairs = []
        for p in sorted(img_dir.rglob(f"*{img_suffix}")):
            stem = p.name[: -len(img_suffix)]
            rel = p.parent.relative_to(img_dir)
            pairs.append((str(rel / stem) if str(rel) != "." else stem, p, gt_dir / rel / f"{stem}{gt_suffix}"))
    if not pairs:
        raise UserFacingError(f"no images in {img_dir}")
    missing = [str(g) for _, _, g in pairs if not g.exists()]
    if missing:
        raise UserFacingError(f"{len(missing)} ground-truth files missing, e.g. {missing[0]}")
    return [SemsegSample(i, p, g) for i, p, g in sorted(pairs)]


def read_index_png(path: str | Path):
    """An index PNG (mode L or P) as its raw integer indices, not its palette colours."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise UserFacingError(f"{path} is a {im.mode} image; expected an index PNG (mode L or P)")
        return np.asarray(im)
