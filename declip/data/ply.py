"""Minimal PLY mesh I/O (ascii and binary), enough for BOP object models.

BOP models (`models/obj_XXXXXX.ply`, millimetres) carry per-vertex x y z, normals, colours and
sometimes texture coordinates, and triangle faces as `property list uchar int vertex_indices`
(bop_toolkit_lib/inout.py load_ply reads the same elements). Only positions, optional colours and
triangles are kept here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from declip.errors import UserFacingError

_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
          "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
          "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


@dataclass
class Mesh:
    vertices: np.ndarray  # (N, 3) float64
    faces: np.ndarray  # (F, 3) int64 triangles
    colors: np.ndarray | None = None  # (N, 3) uint8


def _header(f) -> tuple[str, list]:
    if f.readline().strip() != b"ply":
        raise UserFacingError(f"{f.name} is not a PLY file (first line is not 'ply')")
    fmt, elements = None, []
    while True:
        line = f.readline()
        if not line:
            raise UserFacingError(f"{f.name}: PLY header has no end_header")
        words = line.decode("ascii", "replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            if words[1] == "list":
                elements[-1][2].append((words[4], ("list", _TYPES[words[2]], _TYPES[words[3]])))
            else:
                elements[-1][2].append((words[2], _TYPES[words[1]]))
        elif words[0] == "end_header":
            return fmt, elements


def _read_binary(f, fmt: str, elements: list) -> dict:
    end = "<" if fmt == "binary_little_endian" else ">"
    out = {}
    for name, count, props in elements:
        if all(not isinstance(p[1], tuple) for p in props):
            dtype = np.dtype([(p, end + t) for p, t in props])
            out[name] = np.frombuffer(f.read(dtype.itemsize * count), dtype=dtype, count=count)
            continue
        if len(props) == 1 and isinstance(props[0][1], tuple):  # triangle fast path (BOP models)
            _, (_, tn, ti) = props[0]
            dtype = np.dtype([("n", end + tn), ("i", end + ti, (3,))])
            pos = f.tell()
            buf = f.read(dtype.itemsize * count)
            tris = np.frombuffer(buf, dtype=dtype, count=count) if count and len(buf) == dtype.itemsize * count else None
            if count == 0 or (tris is not None and np.all(tris["n"] == 3)):
                out[name] = [{props[0][0]: r} for r in (tris["i"] if count else [])]
                continue
            f.seek(pos)
        rows = []
        for _ in range(count):  # general list elements: one row at a time
            row = {}
            for pname, ptype in props:
                if isinstance(ptype, tuple):
                    n = int(np.frombuffer(f.read(np.dtype(ptype[1]).itemsize), end + ptype[1])[0])
                    row[pname] = np.frombuffer(f.read(np.dtype(ptype[2]).itemsize * n), end + ptype[2])
                else:
                    row[pname] = np.frombuffer(f.read(np.dtype(ptype).itemsize), end + ptype)[0]
            rows.append(row)
        out[name] = rows
    return out


def _read_ascii(f, elements: list) -> dict:
    out = {}
    for name, count, props in elements:
        rows = []
        for _ in range(count):
            vals = f.readline().split()
            row, k = {}, 0
            for pname, ptype in props:
                if isinstance(ptype, tuple):
                    n = int(vals[k])
                    row[pname] = np.asarray(vals[k + 1:k + 1 + n], dtype=ptype[2])
                    k += 1 + n
                else:
                    row[pname] = float(vals[k])
                    k += 1
            rows.append(row)
        out[name] = rows
    return out


def _column(data, key):
    if isinstance(data, np.ndarray):
        return data[key].astype(np.float64)
    return np.asarray([r[key] for r in data], dtype=np.float64)


def read_ply(path: str | Path) -> Mesh:
    path = Path(path)
    if not path.is_file():
        raise UserFacingError(f"model file {path} does not exist")
    with open(path, "rb") as f:
        fmt, elements = _header(f)
        data = _read_ascii(f, elements) if fmt == "ascii" else _read_binary(f, fmt, elements)
    vert = data.get("vertex")
    if vert is None:
        raise UserFacingError(f"{path} has no vertex element")
    xyz = np.stack([_column(vert, k) for k in "xyz"], 1)
    colors = None
    names = vert.dtype.names if isinstance(vert, np.ndarray) else (tuple(vert[0]) if vert else ())
    if all(c in names for c in ("red", "green", "blue")):
        colors = np.stack([_column(vert, c) for c in ("red", "green", "blue")], 1).astype(np.uint8)
    faces = np.zeros((0, 3), dtype=np.int64)
    if data.get("face"):
        key = "vertex_indices" if "vertex_indices" in data["face"][0] else "vertex_index"
        polys = [np.asarray(r[key], dtype=np.int64) for r in data["face"]]
        # fan-triangulate polygons (BOP models are triangle meshes; this keeps quads usable)
        faces = np.asarray([(p[0], p[i], p[i + 1]) for p in polys for i in range(1, len(p) - 1)], dtype=np.int64)
    return Mesh(xyz, faces.reshape(-1, 3), colors)


def write_ply(path: str | Path, mesh: Mesh) -> None:
    """Binary little-endian PLY with x y z (float), optional red green blue (uchar) and triangles."""
    n, nf = len(mesh.vertices), len(mesh.faces)
    props = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if mesh.colors is not None:
        props += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    head = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    head += [f"property {'float' if t == '<f4' else 'uchar'} {p}" for p, t in props]
    head += [f"element face {nf}", "property list uchar int vertex_indices", "end_header"]
    vert = np.zeros(n, dtype=np.dtype(props))
    for i, k in enumerate("xyz"):
        vert[k] = mesh.vertices[:, i]
    if mesh.colors is not None:
        for i, k in enumerate(("red", "green", "blue")):
            vert[k] = mesh.colors[:, i]
    face = np.zeros(nf, dtype=np.dtype([("n", "u1"), ("i", "<i4", (3,))]))
    face["n"] = 3
    face["i"] = mesh.faces
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(("\n".join(head) + "\n").encode("ascii"))
        f.write(vert.tobytes())
        f.write(face.tobytes())
