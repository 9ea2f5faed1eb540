"""Study-specific figure kinds. Each module here registers its kinds with
`analysis.figures.register_figure`; importing this package imports them all."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
