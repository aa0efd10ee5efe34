"""Where pickles hide in model files: archives opened at any depth, and which files or members a loader may unpickle.

security.check_scan hands exactly these to picklescan: a member named data.pkl or a file that parses as a pickle
stream, never raw tensor storage (whose float bits picklescan decodes to imports by chance).

>>> import pickle
>>> pickle_like("model.pt2:m/data.pkl", b""), pickle_like("m.pt2:m/data/weights/weight_0", b"\\x80\\x02junk")
(True, False)
>>> pickle_like("m.pt2:m/data/0", pickle.dumps([1, 2])), pickle_like("blob", b"\\x00\\x01\\x02")
(True, False)
"""

import io
import pickletools
import zipfile
from pathlib import Path

MAX_ARCHIVE_DEPTH = 8  # zips inside zips (a torch.export .pt2 holds a torch.save zip); deeper is refused
# Metadata MLflow and the stages write beside model files (MLmodel, conda.yaml, requirements.txt, the code of a
# models-from-code model, deployable.json): no loader unpickles them.
TEXT_SUFFIXES = {".yaml", ".yml", ".json", ".txt", ".md", ".py", ".toml", ".cfg"}
PICKLE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt"}  # names loaders unpickle (data.pkl, ...)


def files(path):  # path itself if a file, else every file under it
    return [Path(path)] if Path(path).is_file() else sorted(p for p in Path(path).rglob("*") if p.is_file())


class TooDeep(ValueError):  # archives nested past MAX_ARCHIVE_DEPTH: what lies below is unscanned, so no pass
    pass


def leaves(path):
    """(name, bytes) of every file under `path`, archives opened recursively: a member of a zip inside a zip
    is named outer:inner:member. picklescan itself opens one level of zip only."""
    for f in files(path):
        yield from open_(str(f), f.read_bytes(), 0)


def open_(name, data, depth):
    if not zipfile.is_zipfile(io.BytesIO(data)):
        yield name, data
        return
    if depth >= MAX_ARCHIVE_DEPTH:
        raise TooDeep(f"{name}: archives nested deeper than {MAX_ARCHIVE_DEPTH}; what lies below was not scanned")
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for member in z.namelist():
            if not member.endswith("/"):
                yield from open_(f"{name}:{member}", z.read(member), depth + 1)


def parses(data):
    """The bytes are one pickle stream, opcode by opcode up to its STOP (raw tensor bytes almost never are)."""
    try:
        return any(op.name == "STOP" for op, _, _ in pickletools.genops(data))
    except Exception:  # unknown opcode, truncated argument, no STOP
        return False


def pickle_like(name, data):
    """What a loader may unpickle: a file or member named as a pickle, or bytes that parse as one (in archives
    from a protocol 2+ header 0x80 <version> only). Not raw tensor storage (data/0, data/weights/weight_32):
    torch never unpickles it, and picklescan decodes its float bits to imports by chance."""
    leaf = name.rsplit(":", 1)[-1]
    if Path(leaf).suffix in PICKLE_SUFFIXES:
        return True
    header = len(data) > 1 and data[0] == 0x80 and data[1] <= 5
    return (header or leaf == name) and parses(data)


def is_text(name):
    return Path(name).suffix in TEXT_SUFFIXES or Path(name).name == "MLmodel"
