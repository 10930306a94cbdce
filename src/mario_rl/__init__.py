"""mario-rl: reinforcement-learning agents for Super Mario Bros."""
