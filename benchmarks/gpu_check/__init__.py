"""The GPU path checked in one run on a bare CUDA machine: install, CUDA training, TensorRT export, speed, serving.

    python -m benchmarks.gpu_check --out DIR [--wheels FOLDER | --no-install] [--stages a,b] [--dry-run]

From the project's checkout it installs what is missing (:mod:`.install`), then
runs the stages (:mod:`.stages`, :mod:`.speed`) each in a process of its own
under its own time limit (:mod:`.runner`), so a stage that fails or hangs is
recorded with its error and the next still runs. ``DIR`` receives
``gpu_check.json`` and ``gpu_check.log``, rewritten after every stage
(:mod:`.report`); the JSON ends with a summary of every stage's status and the
two targets: TensorRT fp16 over PyTorch all-K at batch 1 and 64, and dynamic
batching over none at 16 clients, each at least 2x. ``--dry-run`` needs no GPU:
it checks the arguments, writes the JSON skeleton and the log, and prints the
plan.
"""
