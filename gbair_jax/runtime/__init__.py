"""Runtime helpers beside the stages: the device mesh with its partitioning rules, and the
multi-process set-up. They import no stage of gbair_jax, and every stage may import them."""
