from bicycle.testing.fixtures import *  # noqa: F401,F403  (the kit's fixtures: bicycle_registry, ...)
