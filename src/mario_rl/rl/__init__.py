"""Pure reinforcement-learning math: advantages, losses, action sampling, running statistics,
schedules. No I/O, no envs, no models: networks, algorithms and evaluation import it downward."""
