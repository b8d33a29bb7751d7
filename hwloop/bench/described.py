"""``DescribedDevice``: the one generic bench driver, for any controller dialect described in YAML.

It lives in ``hwloop.bench.driver`` (with ``VisaDevice``, the ANB dialect's
name for it); this module keeps the name under which the built-in plug-in
``type: described`` and earlier code import it.
"""

from .driver import DescribedDevice

__all__ = ["DescribedDevice"]
