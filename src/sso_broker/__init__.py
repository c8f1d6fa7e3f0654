import sys

__version__ = "0.1.0"

# Pydantic's v1 compatibility layer stays unloaded: FastAPI imports it (23 modules, 1.2 MB of
# every worker) only to ask of each field whether its type is a v1 model, and answers "no"
# when the import fails, which it then does (README, *Performance*). Nothing here uses v1.
sys.modules.setdefault("pydantic.v1", None)  # type: ignore[arg-type]
