"""Multi-domain retrieval (ADI, Jiang et al.): two-tower models conditioned on the domain, trained with a
sampled softmax with log Q correction, evaluated by full-corpus Recall@N / NDCG@N, served from per-domain
item indexes.

- :mod:`~polyrec.retrieval.inputs`: the tensors the towers read;
- :mod:`~polyrec.retrieval.data`: the retrieval data sets (positives, chronological split, histories, corpora);
- :mod:`~polyrec.retrieval.loss`: the sampled softmax of eq. 4-5 and the negative sampler;
- :mod:`~polyrec.retrieval.metrics`: Recall@N and NDCG@N over a domain's whole corpus;
- :mod:`~polyrec.retrieval.layers`: batch-normalised network banks and the domain interest adaptation layers;
- :mod:`~polyrec.retrieval.trainer`: the training loop, early stopping, self-training (Algorithm 1);
- :mod:`~polyrec.retrieval.index`: faiss exact and HNSW indexes, one per domain;
- :mod:`~polyrec.retrieval.presets`, :mod:`~polyrec.retrieval.experiment`, :mod:`~polyrec.retrieval.benchmark`:
  the presets, one run and its directory (and ``retrieve``), many runs.

The models themselves are registered under the ``retrieval`` tag (:mod:`polyrec.models.retrieval`).
"""
