"""Image-caption corpora, read.

- `pairs`: image-caption pairs loaded (a saved dataset, a Hub dataset, data files) and checked, CLIP's augmentation,
  reproducible batches and streams;
- `data_files`: a corpus as its data files (parquet files or webdataset tar shards), listed and read one at a time;
- `offline_corpus`: the offline image-caption corpus of the main job's recipe, made from image sets that install
  without the Hub.
"""
