"""The synthetic social-search world: the project's embedded default data (see docs/synthetic_world.md).

    from ingest.synthetic import WorldConfig, generate_world
    from ingest.contract import write_dataset
    world = generate_world(WorldConfig.preset("tiny", seed=1))
    write_dataset(world, path)
"""

from .config import PRESETS, WorldConfig
from .text import normalize
from .world import SOURCE, generate_world

__all__ = ["PRESETS", "SOURCE", "WorldConfig", "generate_world", "normalize"]
