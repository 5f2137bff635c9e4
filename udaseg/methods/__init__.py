"""Self-training methods as plug-ins of one loop (see base.py for the hooks).

Importing this package registers every method; `--method a+b` composes them.
"""

import udaseg.methods.cpsl  # noqa: F401  (registers cpsl)
import udaseg.methods.dida  # noqa: F401  (registers dida)
import udaseg.methods.diga  # noqa: F401  (registers diga, diga_warmup)
import udaseg.methods.hiast  # noqa: F401  (registers hiast)
import udaseg.methods.mic  # noqa: F401  (registers mic)
import udaseg.methods.tdi  # noqa: F401  (registers tdi)
from udaseg.methods import self_training  # noqa: F401  (registers self_training, source_only)
from udaseg.methods.base import (
    REGISTRY,
    Method,
    Step,
    build_methods,
    register_method,
    resolve_names,
    resolve_warmup,
    warmups,
)

__all__ = [
    "REGISTRY",
    "Method",
    "Step",
    "build_methods",
    "register_method",
    "resolve_names",
    "resolve_warmup",
    "warmups",
]
