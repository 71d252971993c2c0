"""One trial on a Ray worker: the trainable around the one training loop, its checkpoints (background or synchronous),
which checkpoints stay, a finished trial restored as unfinished. Imports search.experiment and search.selection."""
