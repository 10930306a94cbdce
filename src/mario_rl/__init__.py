"""mario-rl: reinforcement-learning agents for Super Mario Bros.

Importing it registers the envs with Gymnasium (``gymnasium.make("mario_rl/Mario-1-1-v0")``).
"""

from . import envs as envs
