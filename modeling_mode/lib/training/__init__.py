"""Training MODE's CLIP data experts with Accelerate (Ma et al., CVPR 2024, section 2).

A seed CLIP trains on every pair (`--cluster all`). Each expert forks from a seed checkpoint, taking its weights,
optimizer state and schedule position, and continues on one coarse cluster's pairs: independent jobs that may run
anywhere, on any number of processes. `modeling_mode.lib.assembly` then joins them into one `ModeCLIPModel`.

- `arguments`: `ExpertTrainingArguments`, the flags of train/expert.py;
- `start`: where a run starts, what it loads from there;
- `processors`: a CLIP tokenizer and image processor made without downloads, for experts trained from scratch;
- `batches`: `TrainingData`, what a run trains on and this process's micro-batches;
- `streams`: streams of a corpus's data files that resume exactly where they stood (`--streaming`);
- `optimization`: AdamW's parameter groups and the learning-rate schedule;
- `loss`: CLIP's contrastive loss over the global batch, gradients kept across processes;
- `loop`: `train()`, its steps and their speed (samples/s, MFU, loader wait), the gradient accumulation;
- `checkpoints`: checkpoints and the final save;
- `record`: the record a run writes as it starts (training_args.json), and its flat form for trackers;
- `outputs`: a run's record on disk, and when a run is finished (`is_finished`);
- `command_line`: `main`, train/expert.py's (and `python -m modeling_mode.lib.training`'s).

It needs accelerate and datasets, which the Hub remote-code model does not.
"""
