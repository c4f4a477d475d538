"""Type aliases for the public API's hints, importing no backend.

Keras and its backends ship no type information, so a tensor is `Any` to a
type checker; the alias names what a value is for a reader.
"""

from typing import Any
from typing import TypeAlias

# A backend tensor, a Keras variable, or anything `keras.ops` accepts
# (a NumPy array, a Python number).
Tensor: TypeAlias = Any
