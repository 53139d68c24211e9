"""Loading the pickles that data sets ship in, without running arbitrary code.

The official downsampled ImageNet and the classic ``mnist.pkl.gz`` are pickles of dicts,
lists and numpy arrays. A plain ``pickle.load`` of a file someone handed you can execute
any code; this unpickler resolves only the few numpy globals that arrays need and refuses
everything else, naming the file and the global.
"""

from __future__ import annotations

import pickle
from typing import IO, Any

# (module, name) pairs that rebuild numpy arrays and scalars. numpy >= 2 moved numpy.core to
# numpy._core; old pickles (Python 2 era, numpy 1.x) name the former.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "bytearray"),
    ("__builtin__", "bytearray"),  # Python 2
    ("_codecs", "encode"),  # protocol-2 pickles of bytes under Python 3
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, f: IO[bytes], where: str):
        # latin1: Python 2 pickles of numpy arrays store their raw bytes as str.
        super().__init__(f, encoding="latin1")
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{self.where}: refusing to load global {module}.{name} "
                                         "(only numpy arrays, lists, dicts and numbers are expected)")
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core"):]
            try:
                __import__(module)
            except ImportError:  # numpy 1.x
                module = "numpy.core" + module[len("numpy._core"):]
        if module == "__builtin__":
            module = "builtins"
        return super().find_class(module, name)


def load_pickle(f: IO[bytes], where: str = "<pickle>") -> Any:
    """Unpickle ``f`` allowing only numpy arrays and plain containers; ``where`` names it in errors."""
    try:
        return _SafeUnpickler(f, where).load()
    except pickle.UnpicklingError:
        raise
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OSError) as e:
        raise pickle.UnpicklingError(f"{where}: not a readable pickle ({type(e).__name__}: {e})") from None
