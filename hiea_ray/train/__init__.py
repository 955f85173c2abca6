"""Training on Ray Train: the one loop and contract (``loop``), the tasks it runs (``tasks``), and
the jobs that prepare their data (``retriever``: hard-negative mining + rounds; ``reranker``:
listwise rows from the retrieved candidates)."""
