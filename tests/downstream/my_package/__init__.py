"""The README's example package."""

__title__ = "my-package"
__version__ = "1.0.0"
