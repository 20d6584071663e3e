"""Reading command-line overrides the way users type them.

``python -m monai.bundle run --resume false`` hands the config the *string* "false" (only ``False`` is parsed as
a Python literal), and a non-empty string is true. Every yes/no key of the configs goes through :func:`flag`.
"""

from __future__ import annotations

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0", "none", "")


def flag(value: object, name: str = "option") -> bool:
    """``value`` as a bool: booleans and numbers as Python reads them, strings by their (case-insensitive) word.

    Raises:
        ValueError: for a string that is not one of true/yes/on/1 or false/no/off/0/none/"".
    """
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError(f"{name}: {value!r} is not a yes/no value (use true or false)")
    return bool(value)
