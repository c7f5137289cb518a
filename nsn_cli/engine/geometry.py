"""Layer geometry: patch size and stride per layer, and the map sizes they produce."""

from __future__ import annotations

import re
from dataclasses import dataclass

from nsn_cli.errors import ParameterError

PRESETS = {
    "mnist": "4x4/2,3x3/2,6x6/2",  # paper Table 3: 28 -> 13 -> 6 -> 1
    "lfw64": "4x4/2,3x3/2,3x3/2,3x3/2,3x3/1",  # paper Table 4: 64 -> 31 -> 15 -> 7 -> 3 -> 1
}


@dataclass(frozen=True)
class LayerShape:
    """Square ``patch`` x ``patch`` windows moved by ``stride`` (no padding)."""

    patch: int
    stride: int

    def out_size(self, size: int) -> int:
        """Positions along one axis of a map of ``size``: ``floor((size - patch) / stride) + 1``."""
        if size < self.patch:
            return 0
        return (size - self.patch) // self.stride + 1

    def in_size(self, size: int) -> int:
        """The map size generation writes from ``size`` positions: ``(size - 1) * stride + patch``."""
        return (size - 1) * self.stride + self.patch

    def __str__(self) -> str:
        return f"{self.patch}x{self.patch}/{self.stride}"


def parse_arch(text: str) -> list[LayerShape]:
    """Parse a preset name (``mnist``, ``lfw64``) or ``"4x4/2,3x3/2,6x6/2"``."""
    spec = PRESETS.get(text.strip().lower(), text)
    layers = []
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:x(\d+))?\s*/\s*(\d+)\s*", part)
        if not match:
            raise ParameterError(
                "arch",
                f"{{name}}: '{part.strip()}' is not a layer; write PxP/S, e.g. '4x4/2,3x3/2,6x6/2', "
                f"or a preset ({', '.join(PRESETS)})"
            )
        patch, other, stride = int(match.group(1)), match.group(2), int(match.group(3))
        if other is not None and int(other) != patch:
            raise ParameterError("arch", f"{{name}}: '{part.strip()}': only square patches are supported")
        if patch < 1 or stride < 1 or stride > patch:
            raise ParameterError("arch", f"{{name}}: '{part.strip()}': need patch >= 1 and 1 <= stride <= patch")
        layers.append(LayerShape(patch, stride))
    return layers


def arch_string(layers: list[LayerShape]) -> str:
    return ",".join(str(layer) for layer in layers)


def map_sizes(layers: list[LayerShape], height: int, width: int) -> list[tuple[int, int]]:
    """Sizes of ``F[0]`` (the image) .. ``F[L]``; zeros where a layer no longer fits."""
    sizes = [(height, width)]
    for layer in layers:
        h, w = sizes[-1]
        sizes.append((layer.out_size(h), layer.out_size(w)))
    return sizes


def exact_input_size(layers: list[LayerShape]) -> int:
    """The input size that reaches exactly 1x1 using every pixel."""
    size = 1
    for layer in reversed(layers):
        size = layer.in_size(size)
    return size


def check_reaches_one(layers: list[LayerShape], height: int, width: int) -> None:
    """Raise unless the last layer maps ``height x width`` images to 1x1."""
    final = map_sizes(layers, height, width)[-1]
    if final != (1, 1):
        need = exact_input_size(layers)
        stride_product = 1
        for layer in layers:
            stride_product *= layer.stride
        raise ParameterError(
            "arch",
            f"architecture {arch_string(layers)} maps {height}x{width} images to {final[0]}x{final[1]}, "
            f"not 1x1; it reaches 1x1 from sizes {need} to {need + stride_product - 1} "
            f"(exactly at {need}); change {{name}} or prep with --size {need}"
        )


def default_arch(height: int, width: int) -> str:
    """The preset for a known image size, else an error asking for ``--arch``."""
    if (height, width) == (28, 28):
        return "mnist"
    if (height, width) == (64, 64):
        return "lfw64"
    raise ParameterError(
        "arch",
        f"no default architecture for {height}x{width} images; give {{name}}, e.g. "
        f"{{name}} '4x4/2,3x3/2,6x6/2' (28x28) or a custom 'PxP/S,...' that reaches 1x1"
    )


def receptive_field(layers: list[LayerShape]) -> int:
    """Side of the pixel patch one position of the last of ``layers`` sees."""
    return exact_input_size(layers)


def preset_name(layers: list[LayerShape]) -> str | None:
    """The preset these layers are, if any."""
    text = arch_string(layers)
    return next((name for name, spec in PRESETS.items() if spec == text), None)
