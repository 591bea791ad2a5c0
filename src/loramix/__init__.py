"""loramix: mixtures of LoRA experts for causal language models.

    mixture = loramix.compose(model, ["experts/math", "experts/code"], router="hard")
"""

__version__ = "0.1.0"

from loramix.experts import Expert, load_expert, load_experts  # noqa: E402
from loramix.export import export_mixture  # noqa: E402
from loramix.mixture import MixtureConfig, MixtureModel, compose, compose_folders, load_mixture  # noqa: E402
from loramix.routers import ROUTERS, Routing, make_router  # noqa: E402

__all__ = ["Expert", "MixtureConfig", "MixtureModel", "ROUTERS", "Routing", "compose", "compose_folders",
           "export_mixture", "load_expert", "load_experts", "load_mixture", "make_router", "__version__"]
