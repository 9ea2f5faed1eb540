"""Environment variables for the processes trials run in: set by the runner for a
local Ray, by `sweeps.cluster` for its nodes and by `sweeps.submit` for a job."""

# glibc gives each thread that allocates its own malloc arena and keeps freed memory
# there. Tune runs each trial in a new thread of a reused worker process, so the
# worker's peak heap grew trial after trial (bench/memory.py: 75 MB above an idle
# worker; 32 MB with two arenas).
WORKER_ENV = {"MALLOC_ARENA_MAX": "2"}
