"""What every tool of the library shares: bad input named, checked and turned into one line and exit status 2.

- `errors`: `InputError`, the one error type of bad input;
- `checks`: the checks of inputs and outputs every tool makes before any work (a source that exists, an output
  folder that can be written and holds no other tool's output, files inside a folder, weight files that open);
- `mode_folder`: a saved MODE read as untrusted input, its config checked against its weights;
- `files`: atomic writes (a file, a folder) and `writing_lock`, one run at a time writing into a folder;
- `resume_guard`: the refusal of an output made with other settings, in one line;
- `cli`: the command-line runner: a dataclass of flags, JSON argument files, exit status 2;
- `processors`: a model folder's tokenizer and processor loaded as saved (the class its tokenizer_config names);
- `status` and `entry_points`: the one protocol between a parent and the entry points it launches, the child's side
  (its progress bars and its refusal, reported to a JSON-lines status file) and the parent's (the command built from
  an argument dataclass, run, its events read, its failure one `EntryPointError`).
"""
