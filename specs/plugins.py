"""Registries' plugins: the modules other packages name in an entry-point group, imported once."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points


def load_entry_points(
    group: str, loaded: set[str], kind: str, error: Callable[[str], Exception]
) -> list[str]:
    """Import every module of entry-point ``group`` not in ``loaded`` yet; the names loaded now.

    Args:
        group: The entry-point group (``dp_norm_bench.norms``, ``dp_norm_bench.datasets``).
        loaded: The ``name=value`` keys already imported; updated before each import, since a
            plugin may look its registry up as it loads.
        kind: What the plugins register, for the message (``norm``, ``dataset``).
        error: The registry's exception type, built from the one-line message.

    Raises:
        Exception: ``error(message)`` when an entry point fails to import.
    """
    names = []
    for point in entry_points(group=group):
        key = f"{point.name}={point.value}"
        if key in loaded:
            continue
        loaded.add(key)
        try:
            point.load()
        except Exception as err:
            raise error(
                f"{kind} plugin {point.name!r} ({point.value}, entry point group {group}) "
                f"failed to import: {type(err).__name__}: {err}"
            ) from err
        names.append(point.name)
    return names
