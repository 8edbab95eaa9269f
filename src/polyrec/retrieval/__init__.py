"""Multi-domain retrieval: two-tower models (ADI and its baselines), sampled softmax with log Q correction,
full-corpus Recall@N / NDCG@N, and per-domain item indexes."""
