"""Zero-shot classification and image-text retrieval of a `CLIPModel` or a `ModeCLIPModel`.

- `scoring`: the experts' features, the ensembles and the metrics (`metrics/`, `evaluate` modules loaded by path);
- `inputs`: an evaluation's inputs, checked and loaded: templates, class names, the dataset's columns, the model;
- `run`: the evaluators' arguments, `evaluate_zero_shot` and `evaluate_retrieval`, and the results they write;
- `outputs`: the names of the results' rows, a MODE's revision, where the metric record goes;
- `command_line`: eval/zeroshot.py's and eval/retrieval.py's (`mode-zeroshot`, `mode-retrieval`) `main`s;
- `clip_benchmark`: a MODE as clip_benchmark's zero-shot classification scores models.
"""
