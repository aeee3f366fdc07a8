"""MODE's clustering (Ma et al., CVPR 2024, section 3.1): caption embeddings, two-level balanced k-means, labels.

- `embedding`: caption embeddings with any Hugging Face text encoder, as memory-mappable shards;
- `kmeans`: the balanced k-means algorithms and the clusters' file;
- `labels_table`: the labels table, every pair's cluster ids beside the corpus;
- `clustered_corpus`: a corpus with its cluster ids, in memory or streamed: the one reader of a clustering;
- `run`: `ClusterArguments` and the clustering run;
- `outputs`: a finished clustering run on disk (`read_finished_run`, `is_finished_run`), which its consumers read;
- `push`: a finished clustering pushed to a Hub dataset repo, with its card;
- `command_line`: train/cluster.py's (and `mode-cluster`'s, `python -m modeling_mode.lib.clustering`'s) `main`.
"""
