"""Reader of ScanNet200 val scenes (preprocessed, posed RGB-D) and of the hosts' class-agnostic 3D masks.

The mini 3D world (`declip.data.mini3d`) writes exactly this layout; at full scale the user prepares it
from ScanNet (terms of use apply, see `MISSING_SCANNET`). Per scene folder `<root>/scans/<scene>/`:
vertices `<scene>_vert.npy` (N x 6, xyz rgb) or the raw `<scene>_vh_clean_2.ply`; frames `color/<i>.{jpg,png}`,
`depth/<i>.png` (uint16 mm), `pose/<i>.txt` (4x4 camera-to-world), `intrinsic/intrinsic_{color,depth}.txt`;
OpenMask3D's own export places those under `data_compressed/` and `data/`, which is accepted too.
GT: `<root>/gt/<scene>.txt` (label_id*1000 + instance per vertex). Proposals (released by the hosts):
OpenMask3D `<proposals>/openmask3d/<scene>_masks.pt` (torch, N_vertices x K; or .npy), Open3DIS
`<proposals>/open3dis/<scene>.pth` (dict with "ins": K x N masks or RLE dicts, "conf": K scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from declip.errors import UserFacingError

MISSING_SCANNET = (
    "ScanNet200 data not found at {path}. ScanNet is distributed only under the ScanNet Terms of Use: "
    "fill in and sign the terms form linked from https://github.com/ScanNet/ScanNet (section 'ScanNet Data'), "
    "then use the download script the ScanNet team sends you to get the val scans (*.sens, *_vh_clean_2.ply) "
    "and the ScanNet200 label map. Export every frame with ScanNet's SensReader (color/, depth/, pose/, "
    "intrinsic/), write the instance GT with BenchmarkScripts/ScanNet200/preprocess_scannet200.py as "
    "label_id*1000+instance per vertex into <root>/gt/<scene>.txt, list the scenes in <root>/val.txt, and put "
    "the hosts' released class-agnostic masks under <root>/proposals/{{openmask3d,open3dis}}/. This suite never "
    "downloads ScanNet. For the offline mini world run `declip dataset mini3d --out data/mini3d`."
)
HOSTS = ("openmask3d", "open3dis")


def _first(folder: Path, *candidates: str) -> Path:
    for c in candidates:
        if (folder / c).exists():
            return folder / c
    return folder / candidates[0]


def read_ply_vertices(path: Path) -> np.ndarray:
    """(N, 6) float32 x y z r g b of a PLY's vertex element (binary little/big endian or ascii)."""
    types = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
             "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
             "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
    with open(path, "rb") as f:
        fmt, count, props, in_vertex = None, 0, [], False
        while True:
            line = f.readline().decode("ascii", "replace").strip()
            if not line and f.tell() == 0:
                raise UserFacingError(f"{path} is not a PLY file")
            parts = line.split()
            if parts[:1] == ["format"]:
                fmt = parts[1]
            elif parts[:1] == ["element"]:
                in_vertex = parts[1] == "vertex"
                if in_vertex:
                    count = int(parts[2])
            elif parts[:1] == ["property"] and in_vertex:
                if parts[1] == "list":
                    raise UserFacingError(f"{path}: list properties in the vertex element are not supported")
                props.append((parts[2], types[parts[1]]))
            elif parts[:1] == ["end_header"]:
                break
        if fmt == "ascii":
            data = np.loadtxt(f, max_rows=count, usecols=range(len(props)))
            table = {name: data[:, i] for i, (name, _) in enumerate(props)}
        else:
            endian = "<" if fmt == "binary_little_endian" else ">"
            arr = np.frombuffer(f.read(count * np.dtype([(n, endian + t) for n, t in props]).itemsize),
                                dtype=[(n, endian + t) for n, t in props], count=count)
            table = {name: arr[name] for name, _ in props}
    cols = [table[k] for k in ("x", "y", "z")]
    cols += [table.get(k, np.zeros(count)) for k in ("red", "green", "blue")]
    return np.stack(cols, 1).astype(np.float32)


@dataclass
class ScanNetScene:
    name: str
    folder: Path
    vertices: np.ndarray  # (N, 6) xyz rgb
    frame_ids: list[int]  # frames with a finite pose, sorted
    K_depth: np.ndarray  # 3x3, for the depth image resolution

    @property
    def points(self) -> np.ndarray:
        return self.vertices[:, :3].astype(np.float64)

    def _dir(self, kind: str) -> Path:
        return _first(self.folder, kind, f"data_compressed/{kind}", f"data/{kind}")

    def depth(self, i: int) -> np.ndarray:
        """Depth in metres (ScanNet stores millimetres in uint16 PNGs; 0 = invalid)."""
        from PIL import Image

        with Image.open(self._dir("depth") / f"{i}.png") as im:
            return np.asarray(im, dtype=np.float64) / 1000.0

    def color(self, i: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """uint8 (H, W, 3), resized to `size` = (H, W) when given (ScanNet colour is 1296x968, depth 640x480:
        2D masks live at the depth resolution, so the image is brought to it)."""
        from PIL import Image

        folder = self._dir("color")
        path = _first(folder, f"{i}.jpg", f"{i}.png")
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(im)

    def pose(self, i: int) -> np.ndarray:
        return np.loadtxt(self._dir("pose") / f"{i}.txt")


def list_scenes(root: str | Path) -> list[str]:
    root = Path(root)
    if not (root / "scans").is_dir():
        raise UserFacingError(MISSING_SCANNET.format(path=root))
    if (root / "val.txt").exists():
        return [s.strip() for s in (root / "val.txt").read_text().splitlines() if s.strip()]
    return sorted(p.name for p in (root / "scans").iterdir() if p.is_dir())


def load_scene(root: str | Path, name: str) -> ScanNetScene:
    folder = Path(root) / "scans" / name
    if not folder.is_dir():
        raise UserFacingError(MISSING_SCANNET.format(path=folder))
    if (folder / f"{name}_vert.npy").exists():
        vertices = np.load(folder / f"{name}_vert.npy")
    elif (folder / f"{name}_vh_clean_2.ply").exists():
        vertices = read_ply_vertices(folder / f"{name}_vh_clean_2.ply")
    else:
        raise UserFacingError(f"scene {folder} has neither {name}_vert.npy nor {name}_vh_clean_2.ply. "
                              + MISSING_SCANNET.format(path=folder))
    scene = ScanNetScene(name, folder, vertices, [], np.eye(3))
    intr = _first(folder, "intrinsic", "data/intrinsic")
    K = np.loadtxt(_first(intr, "intrinsic_depth.txt", "intrinsic_color.txt"))[:3, :3]
    depth_dir = scene._dir("depth")
    if not depth_dir.is_dir():
        raise UserFacingError(f"scene {folder} has no depth frames. " + MISSING_SCANNET.format(path=folder))
    ids = sorted(int(p.stem) for p in depth_dir.glob("*.png") if p.stem.isdigit())
    # ScanNet marks failed tracking with -inf poses: those frames cannot be used
    scene.frame_ids = [i for i in ids if np.isfinite(scene.pose(i)).all()]
    scene.K_depth = K
    return scene


def load_gt(root: str | Path, name: str) -> np.ndarray:
    path = Path(root) / "gt" / f"{name}.txt"
    if not path.exists():
        raise UserFacingError(f"GT file {path} is missing. " + MISSING_SCANNET.format(path=root))
    return np.loadtxt(path, dtype=np.int64).reshape(-1)


def _rle_decode(rle: dict) -> np.ndarray:
    """ISBNet/Open3DIS RLE: {'length': N, 'counts': 'start len start len ...'} with 1-based starts."""
    counts = rle["counts"]
    runs = np.asarray(counts.split() if isinstance(counts, str) else counts, dtype=np.int64)
    mask = np.zeros(int(rle["length"]), dtype=bool)
    for start, length in zip(runs[0::2] - 1, runs[1::2]):
        mask[start:start + length] = True
    return mask


def load_tensor_file(path: Path):
    """A user-supplied torch file, loaded without running code: only tensors, numbers, strings, lists and
    dicts (torch's weights_only unpickler). A file that needs anything else is refused, never executed."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserFacingError(
            f"{path} holds Python objects other than tensors, numbers, strings, lists and dicts, so it is not "
            f"loaded (loading it could run code): {str(e).splitlines()[0]}. Re-export it with plain tensors "
            "(torch.save of a dict of tensors) or as .npy") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UserFacingError(f"{path} is not a readable torch file ({e}); download it again") from None


def load_proposals(root: str | Path, proposals_dir: str, host: str, name: str,
                   n_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-agnostic masks (K, N) bool and their confidences (K,) from the host's released files."""
    if host not in HOSTS:
        raise UserFacingError(f"unknown host {host!r}; allowed values: {', '.join(HOSTS)}")
    folder = Path(root) / proposals_dir / host
    if host == "openmask3d":
        pt, npy = folder / f"{name}_masks.pt", folder / f"{name}_masks.npy"
        if pt.exists():
            masks = load_tensor_file(pt)
            masks = masks.numpy() if hasattr(masks, "numpy") else np.asarray(masks)
        elif npy.exists():
            masks = np.load(npy)
        else:
            raise UserFacingError(f"OpenMask3D proposals {pt} (or .npy) are missing: download the class-agnostic "
                                  "masks released with OpenMask3D for the ScanNet200 val scenes into " + str(folder))
        masks = np.asarray(masks).T > 0  # released as (N_vertices, K)
        scores = np.ones(len(masks))
    else:
        path = folder / f"{name}.pth"
        if not path.exists():
            raise UserFacingError(f"Open3DIS proposals {path} are missing: download the Open3DIS ScanNet200 "
                                  "results (final 3D proposals) into " + str(folder))
        data = load_tensor_file(path)
        ins = data["ins"]
        if len(ins) and isinstance(ins[0], dict):
            masks = np.stack([_rle_decode(r) for r in ins])
        else:
            masks = (ins.numpy() if hasattr(ins, "numpy") else np.asarray(ins)) > 0
        conf = data.get("conf")
        scores = np.ones(len(masks)) if conf is None else np.asarray(conf, dtype=np.float64).reshape(-1)
    if masks.ndim != 2 or masks.shape[1] != n_vertices:
        raise UserFacingError(f"{host} proposals for {name} have shape {masks.shape}, expected (K, {n_vertices}) "
                              "masks over the scene's vertices: check that they belong to this scene's mesh")
    return masks, scores
