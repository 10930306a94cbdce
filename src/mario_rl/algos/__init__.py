"""Training algorithms: PPO (plain, LSTM, RND) and A3G."""
