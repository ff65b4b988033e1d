"""Runtime helpers beside the stages: the device mesh with its partitioning rules, the
multi-process set-up, and run-directory file I/O. They import no stage of gbair_jax, and
every stage may import them."""
